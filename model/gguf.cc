#include "model/gguf.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace shardserve {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
// Bounds that no real file comes near; they keep a hostile header from making us allocate
// unbounded memory before the end-of-file checks catch it.
constexpr uint64_t kMaxTensors = 1u << 24;
constexpr uint64_t kMaxKeyValues = 1u << 24;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayNesting = 4;

const GgmlTypeInfo kGgmlTypes[] = {
    {"f32", 1, 4},        {"f16", 1, 2},       {"q4_0", 32, 18},     {"q4_1", 32, 20},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {"q5_0", 32, 22},     {"q5_1", 32, 24},
    {"q8_0", 32, 34},     {"q8_1", 32, 36},    {"q2_K", 256, 84},    {"q3_K", 256, 110},
    {"q4_K", 256, 144},   {"q5_K", 256, 176},  {"q6_K", 256, 210},   {"q8_K", 256, 292},
    {"iq2_xxs", 256, 66}, {"iq2_xs", 256, 74}, {"iq3_xxs", 256, 98}, {"iq1_s", 256, 50},
    {"iq4_nl", 32, 18},   {"iq3_s", 256, 110}, {"iq2_s", 256, 82},   {"iq4_xs", 256, 136},
    {"i8", 1, 1},         {"i16", 1, 2},       {"i32", 1, 4},        {"i64", 1, 8},
    {"f64", 1, 8},        {"iq1_m", 256, 56},  {"bf16", 1, 2},       {nullptr, 0, 0},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {"tq1_0", 256, 54},   {"tq2_0", 256, 66},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {nullptr, 0, 0},      {"mxfp4", 32, 17},
};

// Bounds-checked little-endian cursor over the file image.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& name)
      : data_(data), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": invalid GGUF at byte ", pos_, ": ", what));
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    if (remaining() < sizeof(T)) return Error(absl::StrCat("truncated reading ", what));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view what) {
    ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(what));
    if (len > remaining()) {
      return Error(absl::StrCat(what, " length ", len, " runs past the end of the file"));
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

// Smallest encoded size of one element of `type` (for cheap array-length plausibility checks).
uint64_t MinEncodedSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kString:
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

bool ValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

absl::StatusOr<GgufValue> ReadValue(Reader& r, GgufType type, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::kUint8: {
      ASSIGN_OR_RETURN(uint8_t x, r.Read<uint8_t>("uint8"));
      v.scalar = uint64_t{x};
      break;
    }
    case GgufType::kInt8: {
      ASSIGN_OR_RETURN(int8_t x, r.Read<int8_t>("int8"));
      v.scalar = int64_t{x};
      break;
    }
    case GgufType::kUint16: {
      ASSIGN_OR_RETURN(uint16_t x, r.Read<uint16_t>("uint16"));
      v.scalar = uint64_t{x};
      break;
    }
    case GgufType::kInt16: {
      ASSIGN_OR_RETURN(int16_t x, r.Read<int16_t>("int16"));
      v.scalar = int64_t{x};
      break;
    }
    case GgufType::kUint32: {
      ASSIGN_OR_RETURN(uint32_t x, r.Read<uint32_t>("uint32"));
      v.scalar = uint64_t{x};
      break;
    }
    case GgufType::kInt32: {
      ASSIGN_OR_RETURN(int32_t x, r.Read<int32_t>("int32"));
      v.scalar = int64_t{x};
      break;
    }
    case GgufType::kUint64: {
      ASSIGN_OR_RETURN(uint64_t x, r.Read<uint64_t>("uint64"));
      v.scalar = x;
      break;
    }
    case GgufType::kInt64: {
      ASSIGN_OR_RETURN(int64_t x, r.Read<int64_t>("int64"));
      v.scalar = x;
      break;
    }
    case GgufType::kFloat32: {
      ASSIGN_OR_RETURN(float x, r.Read<float>("float32"));
      v.scalar = double{x};
      break;
    }
    case GgufType::kFloat64: {
      ASSIGN_OR_RETURN(double x, r.Read<double>("float64"));
      v.scalar = x;
      break;
    }
    case GgufType::kBool: {
      ASSIGN_OR_RETURN(uint8_t x, r.Read<uint8_t>("bool"));
      if (x > 1) return r.Error(absl::StrCat("bool value ", int{x}, " is neither 0 nor 1"));
      v.scalar = x != 0;
      break;
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(std::string s, r.ReadString("string value"));
      v.scalar = std::move(s);
      break;
    }
    case GgufType::kArray: {
      if (depth >= kMaxArrayNesting) return r.Error("arrays nested too deeply");
      ASSIGN_OR_RETURN(uint32_t elem_type, r.Read<uint32_t>("array element type"));
      if (!ValidType(elem_type)) {
        return r.Error(absl::StrCat("unknown array element type ", elem_type));
      }
      ASSIGN_OR_RETURN(uint64_t n, r.Read<uint64_t>("array length"));
      v.array_type = static_cast<GgufType>(elem_type);
      if (n > r.remaining() / MinEncodedSize(v.array_type)) {
        return r.Error(absl::StrCat("array length ", n, " runs past the end of the file"));
      }
      v.array.reserve(n);
      for (uint64_t i = 0; i < n; ++i) {
        ASSIGN_OR_RETURN(GgufValue e, ReadValue(r, v.array_type, depth + 1));
        v.array.push_back(std::move(e));
      }
      break;
    }
  }
  return v;
}

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

absl::Status TypeError(absl::string_view key, const GgufValue& v, absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("GGUF key ", key, " has type ", GgufTypeName(v.type), ", want ", want));
}

absl::StatusOr<int64_t> ValueAsInt(absl::string_view key, const GgufValue& v) {
  if (const auto* u = std::get_if<uint64_t>(&v.scalar); u && v.type != GgufType::kArray) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF key ", key, " value out of range"));
    }
    return static_cast<int64_t>(*u);
  }
  if (const auto* s = std::get_if<int64_t>(&v.scalar); s && v.type != GgufType::kArray) return *s;
  return TypeError(key, v, "an integer");
}

}  // namespace

absl::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

const GgmlTypeInfo* GgmlType(uint32_t type_id) {
  if (type_id >= sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0])) return nullptr;
  const GgmlTypeInfo* t = &kGgmlTypes[type_id];
  return t->name == nullptr ? nullptr : t;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, Parse(mapping->data(), mapping->size(), path));
  file->mapping_ = std::move(mapping);
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(const uint8_t* data, size_t size,
                                                          std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->name_ = std::move(name);
  Reader r(data, size, f->name_);

  ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  if (magic != kGgufMagic) return r.Error("bad magic (not a GGUF file)");
  ASSIGN_OR_RETURN(f->version_, r.Read<uint32_t>("version"));
  if (f->version_ != 2 && f->version_ != 3) {
    return r.Error(absl::StrCat("unsupported version ", f->version_, " (want 2 or 3)"));
  }
  ASSIGN_OR_RETURN(uint64_t n_tensors, r.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, r.Read<uint64_t>("metadata count"));
  if (n_tensors > kMaxTensors) return r.Error(absl::StrCat("tensor count ", n_tensors));
  if (n_kv > kMaxKeyValues) return r.Error(absl::StrCat("metadata count ", n_kv));

  for (uint64_t i = 0; i < n_kv; ++i) {
    ASSIGN_OR_RETURN(std::string key, r.ReadString("metadata key"));
    if (key.empty()) return r.Error("empty metadata key");
    ASSIGN_OR_RETURN(uint32_t type, r.Read<uint32_t>("metadata type"));
    if (!ValidType(type)) {
      return r.Error(absl::StrCat("metadata key ", key, " has unknown type ", type));
    }
    ASSIGN_OR_RETURN(GgufValue value, ReadValue(r, static_cast<GgufType>(type), 0));
    if (!f->metadata_.emplace(key, std::move(value)).second) {
      return r.Error(absl::StrCat("duplicate metadata key ", key));
    }
  }

  if (const GgufValue* a = f->Find("general.alignment")) {
    absl::StatusOr<int64_t> align = ValueAsInt("general.alignment", *a);
    if (!align.ok()) return align.status();
    if (*align <= 0 || (*align & (*align - 1)) != 0 || *align > (1 << 20)) {
      return r.Error(absl::StrCat("general.alignment ", *align, " is not a power of two"));
    }
    f->alignment_ = static_cast<uint64_t>(*align);
  }

  f->tensors_.reserve(std::min<uint64_t>(n_tensors, r.remaining() / 24));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    ASSIGN_OR_RETURN(t.name, r.ReadString("tensor name"));
    if (t.name.empty()) return r.Error("empty tensor name");
    ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>("tensor rank"));
    if (n_dims > kMaxDims) {
      return r.Error(absl::StrCat("tensor ", t.name, " has rank ", n_dims, " (max 4)"));
    }
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(int64_t dim, r.Read<int64_t>("tensor dim"));
      if (dim < 0) return r.Error(absl::StrCat("tensor ", t.name, " has a negative dim"));
      if (MulOverflows(elements, static_cast<uint64_t>(dim), &elements) ||
          elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return r.Error(absl::StrCat("tensor ", t.name, " element count overflows"));
      }
      t.dims.push_back(dim);
    }
    ASSIGN_OR_RETURN(t.ggml_type, r.Read<uint32_t>("tensor type"));
    const GgmlTypeInfo* info = GgmlType(t.ggml_type);
    if (info == nullptr) {
      return r.Error(absl::StrCat("tensor ", t.name, " has unknown ggml type ", t.ggml_type));
    }
    ASSIGN_OR_RETURN(t.offset, r.Read<uint64_t>("tensor offset"));
    if (t.offset % f->alignment_ != 0) {
      return r.Error(absl::StrCat("tensor ", t.name, " offset ", t.offset,
                                  " is not a multiple of the alignment ", f->alignment_));
    }
    if (!t.dims.empty() && t.dims[0] % info->block_size != 0) {
      return r.Error(absl::StrCat("tensor ", t.name, " row length ", t.dims[0],
                                  " is not a multiple of the ", info->name, " block size ",
                                  info->block_size));
    }
    t.num_elements = static_cast<int64_t>(elements);
    if (MulOverflows(elements / info->block_size, static_cast<uint64_t>(info->type_size),
                     &t.size_bytes)) {
      return r.Error(absl::StrCat("tensor ", t.name, " byte size overflows"));
    }
    if (f->tensor_index_.count(t.name) != 0) {
      return r.Error(absl::StrCat("duplicate tensor name ", t.name));
    }
    f->tensor_index_.emplace(t.name, f->tensors_.size());
    f->tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the directory.
  uint64_t data_start = r.pos();
  const uint64_t pad = (f->alignment_ - data_start % f->alignment_) % f->alignment_;
  data_start += pad;
  if (!f->tensors_.empty() && data_start > size) {
    return r.Error("data section starts past the end of the file");
  }
  for (GgufTensorInfo& t : f->tensors_) {
    uint64_t begin = 0;
    uint64_t end = 0;
    if (__builtin_add_overflow(data_start, t.offset, &begin) ||
        __builtin_add_overflow(begin, t.size_bytes, &end) || end > size) {
      return absl::InvalidArgumentError(
          absl::StrCat(f->name_, ": invalid GGUF: tensor ", t.name, " (offset ", t.offset, ", ",
                       t.size_bytes, " bytes) runs past the end of the file (", size, " bytes)"));
    }
    t.data = data + begin;
  }
  return f;
}

bool GgufFile::Has(absl::string_view key) const { return Find(key) != nullptr; }

const GgufValue* GgufFile::Find(absl::string_view key) const {
  auto it = metadata_.find(std::string(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::tensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
absl::Status Missing(const std::string& file, absl::string_view key) {
  return absl::NotFoundError(absl::StrCat(file, ": GGUF key ", key, " not found"));
}
}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kString) return TypeError(key, *v, "string");
  return std::get<std::string>(v->scalar);
}

absl::StatusOr<int64_t> GgufFile::GetInt(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  return ValueAsInt(key, *v);
}

absl::StatusOr<uint64_t> GgufFile::GetUint(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (const auto* u = std::get_if<uint64_t>(&v->scalar); u && v->type != GgufType::kArray) {
    return *u;
  }
  if (const auto* s = std::get_if<int64_t>(&v->scalar); s && v->type != GgufType::kArray) {
    if (*s < 0) return absl::InvalidArgumentError(absl::StrCat("GGUF key ", key, " is negative"));
    return static_cast<uint64_t>(*s);
  }
  return TypeError(key, *v, "an unsigned integer");
}

absl::StatusOr<double> GgufFile::GetFloat(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type == GgufType::kFloat32 || v->type == GgufType::kFloat64) {
    return std::get<double>(v->scalar);
  }
  return TypeError(key, *v, "a float");
}

absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kBool) return TypeError(key, *v, "bool");
  return std::get<bool>(v->scalar);
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kArray || v->array_type != GgufType::kString) {
    return TypeError(key, *v, "array of string");
  }
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(std::get<std::string>(e.scalar));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kArray) return TypeError(key, *v, "array of integers");
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) {
    ASSIGN_OR_RETURN(int64_t x, ValueAsInt(key, e));
    out.push_back(x);
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kArray ||
      (v->array_type != GgufType::kFloat32 && v->array_type != GgufType::kFloat64)) {
    return TypeError(key, *v, "array of float");
  }
  std::vector<float> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(static_cast<float>(std::get<double>(e.scalar)));
  return out;
}

}  // namespace shardserve
