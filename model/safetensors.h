// A reader for the safetensors format: an 8-byte little-endian header length, a JSON header
// mapping tensor names to {dtype, shape, data_offsets}, then the tensor bytes.
//
// Open() validates the whole header before any tensor is used: header length within the file,
// every tensor's byte range inside the data section and equal to shape x dtype size, no two
// tensors overlapping, shapes free of overflow. Tensors of dtypes the engine cannot use (F64,
// I64, F8, ...) are listed but Get() refuses them by name.
#ifndef SHARDSERVE_MODEL_SAFETENSORS_H_
#define SHARDSERVE_MODEL_SAFETENSORS_H_

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

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_SAFETENSORS_H_
