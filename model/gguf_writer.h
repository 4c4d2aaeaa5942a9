// GGUF v3 writer: metadata key/values, then tensors streamed to the file one at a time, so a
// model of several GB is written with one tensor in memory at a time.
//
// Tensor offsets are aligned to `general.alignment` (32 unless set). Write() goes to
// "<path>.tmp" and renames it over `path` when every byte is written, so a failed or interrupted
// write never leaves a truncated file under the final name.
#ifndef SHARDSERVE_MODEL_GGUF_WRITER_H_
#define SHARDSERVE_MODEL_GGUF_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace shardserve {

class GgufWriter {
 public:
  void SetString(const std::string& key, const std::string& value);
  void SetUint32(const std::string& key, uint32_t value);
  void SetInt32(const std::string& key, int32_t value);
  void SetFloat32(const std::string& key, float value);
  void SetBool(const std::string& key, bool value);
  void SetStringArray(const std::string& key, const std::vector<std::string>& values);
  void SetInt32Array(const std::string& key, const std::vector<int32_t>& values);
  void SetFloat32Array(const std::string& key, const std::vector<float>& values);

  // Produces a tensor's bytes when Write() reaches it; must append exactly the announced size.
  using Fill = std::function<absl::Status(std::string* bytes)>;
  // `dims` in GGUF order (dims[0] is the row length). `nbytes` is the tensor's size in the file.
  void AddTensor(const std::string& name, uint32_t ggml_type, std::vector<int64_t> dims,
                 uint64_t nbytes, Fill fill);

  // Called after each tensor with (bytes written so far, total tensor bytes).
  using Progress = std::function<void(uint64_t done, uint64_t total)>;
  // Errors name the path: a file that cannot be written, a full disk, a tensor whose Fill failed
  // or returned the wrong size.
  absl::Status Write(const std::string& path, const Progress& progress = nullptr) const;

 private:
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<int64_t> dims;
    uint64_t nbytes;
    Fill fill;
  };
  void Key(const std::string& key, uint32_t type);

  std::string kv_;
  uint64_t n_kv_ = 0;
  uint64_t alignment_ = 32;
  std::vector<Tensor> tensors_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_GGUF_WRITER_H_
