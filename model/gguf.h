// GGUF (v2 and v3) reader: header, metadata key/values and tensor directory.
//
// GgufFile::Open memory-maps the file and validates everything before returning: counts, string
// and array lengths, value types, tensor ranks, dims and the product's overflow, ggml type ids,
// tensor data offsets (aligned to `general.alignment`, default 32) and that every tensor lies
// inside the file. Vocab-only files (no tensors) are accepted. Tensor data are not copied: the
// pointers returned by tensor() point into the mapping and live as long as the GgufFile.
//
// A GgufFile is immutable after Open and may be shared between threads.
#ifndef SHARDSERVE_MODEL_GGUF_H_
#define SHARDSERVE_MODEL_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "common/mapped_file.h"

namespace shardserve {

// Token types of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type).
namespace gguf_token {
enum Type : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};
}  // namespace gguf_token

// GGUF metadata value types (the numbers are the file format's).
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// Name of a metadata type ("uint32", "array", ...).
absl::string_view GgufTypeName(GgufType type);

// One metadata value. Scalars hold their value; arrays hold their element type and elements.
// Integers of every width are stored widened (signed in int64, unsigned in uint64).
struct GgufValue {
  GgufType type = GgufType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string> scalar;
  GgufType array_type = GgufType::kUint8;  // only for kArray
  std::vector<GgufValue> array;            // only for kArray (nested arrays allowed)
};

// ggml tensor types known to this reader, with their block sizes (elements) and bytes per block.
struct GgmlTypeInfo {
  const char* name;
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
};
// Returns nullptr for an id this reader does not know (such tensors are rejected by Open).
const GgmlTypeInfo* GgmlType(uint32_t type_id);

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (row length)
  uint64_t offset = 0;        // relative to the start of the data section
  const uint8_t* data = nullptr;
  uint64_t size_bytes = 0;
  int64_t num_elements = 0;
};

class GgufFile {
 public:
  // Maps and validates `path`. NOT_FOUND when missing; INVALID_ARGUMENT (naming the path and
  // what is wrong) for anything malformed.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an in-memory image (the caller keeps `data` alive while the GgufFile lives).
  // `name` is used in error messages only.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(const uint8_t* data, size_t size,
                                                         std::string name);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return name_; }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  bool Has(absl::string_view key) const;
  const GgufValue* Find(absl::string_view key) const;

  // Typed getters: NOT_FOUND if the key is missing, INVALID_ARGUMENT if the type does not fit
  // (integers convert between widths only when the value fits).
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(absl::string_view key) const;
  absl::StatusOr<double> GetFloat(absl::string_view key) const;
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(absl::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* tensor(absl::string_view name) const;

 private:
  GgufFile() = default;
  std::unique_ptr<MappedFile> mapping_;
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_GGUF_H_
