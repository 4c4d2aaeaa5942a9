// Weight sources: name -> tensor views over memory-mapped files.
//
// A WeightSource owns its mappings; TensorRefs point into them and stay valid as long as the
// source lives. Nothing is read until a tensor's bytes are touched, so a stage that asks only for
// its own layers' tensors pages in only those. Const methods are thread-safe.
#ifndef SHARDSERVE_MODEL_WEIGHTS_H_
#define SHARDSERVE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace shardserve {

struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::string ShapeString(const std::vector<int64_t>& shape);

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool Has(const std::string& name) const = 0;
  // NOT_FOUND naming the tensor when absent.
  virtual absl::StatusOr<TensorRef> Get(const std::string& name) const = 0;
  virtual std::vector<std::string> Names() const = 0;

  // Get() plus a check of dtype-independent shape: INVALID_ARGUMENT naming the tensor, the
  // expected and the found shape.
  // A float vector of n values (norm weight, bias), widened to F32. INVALID_ARGUMENT naming the
  // tensor when it is not F32/F16/BF16 or holds a non-finite value.
  absl::StatusOr<std::vector<float>> GetVectorF32(const std::string& name, int64_t n) const;

  absl::StatusOr<TensorRef> GetWithShape(const std::string& name,
                                         const std::vector<int64_t>& shape) const;
};

// Opens the *.safetensors of a Hugging Face model folder: model.safetensors, or the shards
// listed in model.safetensors.index.json.
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsFolder(const std::string& dir);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_WEIGHTS_H_
