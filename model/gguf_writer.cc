#include "model/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"

namespace shardserve {
namespace {

// Metadata value type ids of the file format.
constexpr uint32_t kUint32 = 4;
constexpr uint32_t kInt32 = 5;
constexpr uint32_t kFloat32 = 6;
constexpr uint32_t kBool = 7;
constexpr uint32_t kString = 8;
constexpr uint32_t kArray = 9;

template <typename T>
void Pod(std::string* out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out->append(buf, sizeof(T));
}

void Str(std::string* out, const std::string& s) {
  Pod<uint64_t>(out, s.size());
  *out += s;
}

uint64_t PadTo(uint64_t n, uint64_t alignment) { return (alignment - n % alignment) % alignment; }

}  // namespace

void GgufWriter::Key(const std::string& key, uint32_t type) {
  Str(&kv_, key);
  Pod<uint32_t>(&kv_, type);
  ++n_kv_;
}

void GgufWriter::SetString(const std::string& key, const std::string& value) {
  Key(key, kString);
  Str(&kv_, value);
}

void GgufWriter::SetUint32(const std::string& key, uint32_t value) {
  Key(key, kUint32);
  Pod(&kv_, value);
  if (key == "general.alignment" && value > 0) alignment_ = value;
}

void GgufWriter::SetInt32(const std::string& key, int32_t value) {
  Key(key, kInt32);
  Pod(&kv_, value);
}

void GgufWriter::SetFloat32(const std::string& key, float value) {
  Key(key, kFloat32);
  Pod(&kv_, value);
}

void GgufWriter::SetBool(const std::string& key, bool value) {
  Key(key, kBool);
  Pod<uint8_t>(&kv_, value ? 1 : 0);
}

void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& values) {
  Key(key, kArray);
  Pod<uint32_t>(&kv_, kString);
  Pod<uint64_t>(&kv_, values.size());
  for (const std::string& s : values) Str(&kv_, s);
}

void GgufWriter::SetInt32Array(const std::string& key, const std::vector<int32_t>& values) {
  Key(key, kArray);
  Pod<uint32_t>(&kv_, kInt32);
  Pod<uint64_t>(&kv_, values.size());
  for (int32_t v : values) Pod(&kv_, v);
}

void GgufWriter::SetFloat32Array(const std::string& key, const std::vector<float>& values) {
  Key(key, kArray);
  Pod<uint32_t>(&kv_, kFloat32);
  Pod<uint64_t>(&kv_, values.size());
  for (float v : values) Pod(&kv_, v);
}

void GgufWriter::AddTensor(const std::string& name, uint32_t ggml_type, std::vector<int64_t> dims,
                           uint64_t nbytes, Fill fill) {
  tensors_.push_back({name, ggml_type, std::move(dims), nbytes, std::move(fill)});
}

absl::Status GgufWriter::Write(const std::string& path, const Progress& progress) const {
  std::string head;
  Pod<uint32_t>(&head, 0x46554747);  // "GGUF"
  Pod<uint32_t>(&head, 3);
  Pod<uint64_t>(&head, tensors_.size());
  Pod<uint64_t>(&head, n_kv_);
  head += kv_;
  uint64_t offset = 0, total = 0;
  for (const Tensor& t : tensors_) {
    offset += PadTo(offset, alignment_);
    Str(&head, t.name);
    Pod<uint32_t>(&head, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) Pod<int64_t>(&head, d);
    Pod<uint32_t>(&head, t.type);
    Pod<uint64_t>(&head, offset);
    offset += t.nbytes;
    total += t.nbytes;
  }
  head.append(PadTo(head.size(), alignment_), '\0');

  const std::string tmp = path + ".tmp";
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(tmp.c_str(), "wb"), &std::fclose);
  if (f == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  }
  auto put = [&](const std::string& bytes) -> absl::Status {
    if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size()) {
      return absl::DataLossError(absl::StrCat("writing ", tmp, " failed: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  };
  auto fail = [&](absl::Status s) {
    f.reset();
    std::remove(tmp.c_str());
    return s;
  };
  if (absl::Status s = put(head); !s.ok()) return fail(s);
  uint64_t written = 0;
  std::string bytes;
  for (const Tensor& t : tensors_) {
    bytes.assign(PadTo(written, alignment_), '\0');
    written += bytes.size();
    const size_t pad = bytes.size();
    if (absl::Status s = t.fill(&bytes); !s.ok()) {
      return fail(
          absl::Status(s.code(), absl::StrCat(path, ": tensor '", t.name, "': ", s.message())));
    }
    if (bytes.size() - pad != t.nbytes) {
      return fail(absl::InternalError(absl::StrCat(path, ": tensor '", t.name, "' produced ",
                                                   bytes.size() - pad, " bytes, not ", t.nbytes)));
    }
    if (absl::Status s = put(bytes); !s.ok()) return fail(s);
    written += t.nbytes;
    if (progress) progress(written, total);
  }
  if (std::fflush(f.get()) != 0) {
    return fail(
        absl::DataLossError(absl::StrCat("writing ", tmp, " failed: ", std::strerror(errno))));
  }
  f.reset();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::PermissionDeniedError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace shardserve
