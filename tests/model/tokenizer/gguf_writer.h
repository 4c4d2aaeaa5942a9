// A minimal GGUF v3 writer for tests: metadata of the common types and optional tensors.
#ifndef SHARDSERVE_TESTS_MODEL_TOKENIZER_GGUF_WRITER_H_
#define SHARDSERVE_TESTS_MODEL_TOKENIZER_GGUF_WRITER_H_

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace shardserve::testing {

class GgufWriter {
 public:
  void AddString(const std::string& key, const std::string& v) {
    Key(key, 8);
    Str(&kv_, v);
    ++n_kv_;
  }
  void AddUint32(const std::string& key, uint32_t v) { Scalar(key, 4, v); }
  void AddInt32(const std::string& key, int32_t v) { Scalar(key, 5, v); }
  void AddFloat32(const std::string& key, float v) { Scalar(key, 6, v); }
  void AddBool(const std::string& key, bool v) { Scalar(key, 7, static_cast<uint8_t>(v)); }
  void AddStringArray(const std::string& key, const std::vector<std::string>& v) {
    Key(key, 9);
    Pod<uint32_t>(&kv_, 8);
    Pod<uint64_t>(&kv_, v.size());
    for (const std::string& s : v) Str(&kv_, s);
    ++n_kv_;
  }
  void AddInt32Array(const std::string& key, const std::vector<int32_t>& v) { Array(key, 5, v); }
  void AddFloat32Array(const std::string& key, const std::vector<float>& v) { Array(key, 6, v); }
  // Raw bytes appended to the metadata section (for malformed-file tests).
  void AddRawKeyValue(const std::string& bytes) {
    kv_ += bytes;
    ++n_kv_;
  }
  // `data` must hold the tensor's bytes; offsets are laid out with `alignment`.
  void AddTensor(const std::string& name, uint32_t ggml_type, const std::vector<int64_t>& dims,
                 const std::string& data) {
    tensors_.push_back({name, ggml_type, dims, data});
  }
  void set_alignment(uint64_t a) { alignment_ = a; }

  std::string Serialize() const {
    std::string out;
    Pod<uint32_t>(&out, 0x46554747);
    Pod<uint32_t>(&out, 3);
    Pod<uint64_t>(&out, tensors_.size());
    Pod<uint64_t>(&out, n_kv_);
    out += kv_;
    std::string data;
    for (const Tensor& t : tensors_) {
      while (data.size() % alignment_ != 0) data.push_back('\0');
      Str(&out, t.name);
      Pod<uint32_t>(&out, static_cast<uint32_t>(t.dims.size()));
      for (int64_t d : t.dims) Pod<int64_t>(&out, d);
      Pod<uint32_t>(&out, t.type);
      Pod<uint64_t>(&out, data.size());
      data += t.data;
    }
    if (!tensors_.empty()) {
      while (out.size() % alignment_ != 0) out.push_back('\0');
      out += data;
    }
    return out;
  }

  bool WriteTo(const std::string& path) const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    const std::string bytes = Serialize();
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return f.good();
  }

 private:
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<int64_t> dims;
    std::string data;
  };
  template <typename T>
  static void Pod(std::string* out, T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    out->append(buf, sizeof(T));
  }
  static void Str(std::string* out, const std::string& s) {
    Pod<uint64_t>(out, s.size());
    *out += s;
  }
  void Key(const std::string& key, uint32_t type) {
    Str(&kv_, key);
    Pod<uint32_t>(&kv_, type);
  }
  template <typename T>
  void Scalar(const std::string& key, uint32_t type, T v) {
    Key(key, type);
    Pod<T>(&kv_, v);
    ++n_kv_;
  }
  template <typename T>
  void Array(const std::string& key, uint32_t elem_type, const std::vector<T>& v) {
    Key(key, 9);
    Pod<uint32_t>(&kv_, elem_type);
    Pod<uint64_t>(&kv_, v.size());
    for (const T& x : v) Pod<T>(&kv_, x);
    ++n_kv_;
  }

  std::string kv_;
  uint64_t n_kv_ = 0;
  uint64_t alignment_ = 32;
  std::vector<Tensor> tensors_;
};

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_MODEL_TOKENIZER_GGUF_WRITER_H_
