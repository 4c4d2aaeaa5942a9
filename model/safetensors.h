// A reader for the safetensors format: an 8-byte little-endian header length, a JSON header
// mapping tensor names to {dtype, shape, data_offsets}, then the tensor bytes.
//
// Open() validates the whole header before any tensor is used: header length within the file,
// every tensor's byte range inside the data section and equal to shape x dtype size, no two
// tensors overlapping, shapes free of overflow. Tensors of dtypes the engine cannot use (F64,
// I64, F8, ...) are listed but Get() refuses them by name.
#ifndef SHARDSERVE_MODEL_SAFETENSORS_H_
#define SHARDSERVE_MODEL_SAFETENSORS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "model/weights.h"

namespace shardserve {

class SafetensorsFile : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  bool Has(const std::string& name) const override;
  absl::StatusOr<TensorRef> Get(const std::string& name) const override;
  std::vector<std::string> Names() const override;

 private:
  struct Entry {
    std::string dtype_name;
    std::vector<int64_t> shape;
    size_t begin = 0;  // offsets from the start of the file
    size_t end = 0;
  };
  explicit SafetensorsFile(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}

  std::unique_ptr<MappedFile> file_;
  std::map<std::string, Entry> entries_;
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t nbytes() const;
};

// Writes a safetensors file of `specs`, in order; `fill(i, dst)` writes tensor i's bytes
// (specs[i].nbytes() of them) into dst. Tensors are produced one at a time, so peak memory is
// the largest tensor. `metadata` goes into the header's __metadata__.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                              const std::function<void(size_t, uint8_t*)>& fill,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_SAFETENSORS_H_
