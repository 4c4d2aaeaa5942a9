#include "model/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "kernels/quant_format.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using nlohmann::json;

// Largest header we accept; real ones are well under a megabyte per thousand tensors.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

size_t SafetensorsDTypeSize(absl::string_view name) {
  if (name == "F64" || name == "I64" || name == "U64") return 8;
  if (name == "F32" || name == "I32" || name == "U32") return 4;
  if (name == "F16" || name == "BF16" || name == "I16" || name == "U16") return 2;
  if (name == "I8" || name == "U8" || name == "BOOL" || name == "F8_E4M3" || name == "F8_E5M2") {
    return 1;
  }
  return 0;
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<TensorRef> WeightSource::GetWithShape(const std::string& name,
                                                     const std::vector<int64_t>& shape) const {
  ASSIGN_OR_RETURN(TensorRef t, Get(name));
  if (t.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has shape ", ShapeString(t.shape), ", expected ", ShapeString(shape)));
  }
  return t;
}

absl::StatusOr<std::vector<float>> WeightSource::GetVectorF32(const std::string& name,
                                                              int64_t n) const {
  ASSIGN_OR_RETURN(TensorRef t, GetWithShape(name, {n}));
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' is ", DTypeName(t.dtype), ", expected a float type"));
  }
  std::vector<float> host(n);
  DequantizeRow(t.dtype, t.data, n, host.data());
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(host[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' holds a non-finite value at ", i));
    }
  }
  return host;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(auto mapped, MappedFile::Open(path));
  const size_t file_size = mapped->size();
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (file_size < 8) {
    return bad(
        absl::StrCat("truncated: ", file_size, " bytes, too short for a safetensors header"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, mapped->data(), 8);  // little-endian on every supported host
  if (header_len > file_size - 8) {
    return bad(absl::StrCat("header length ", header_len, " runs past the end of the file (",
                            file_size, " bytes)"));
  }
  if (header_len > kMaxHeaderBytes)
    return bad(absl::StrCat("header length ", header_len, " too large"));
  const char* header = reinterpret_cast<const char*>(mapped->data() + 8);
  json j = json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("header is not a JSON object");

  const size_t data_start = 8 + header_len;
  const size_t data_size = file_size - data_start;
  std::unique_ptr<SafetensorsFile> st(new SafetensorsFile(std::move(mapped)));
  std::vector<std::pair<size_t, size_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& v = it.value();
    auto tensor_bad = [&](absl::string_view what) {
      return bad(absl::StrCat("tensor '", name, "': ", what));
    };
    if (!v.is_object()) return tensor_bad("entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return tensor_bad("missing string 'dtype'");
    if (sh == v.end() || !sh->is_array()) return tensor_bad("missing array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return tensor_bad("'data_offsets' must be two non-negative integers");
    }
    Entry e;
    e.dtype_name = dt->get<std::string>();
    const size_t elem = SafetensorsDTypeSize(e.dtype_name);
    if (elem == 0) return tensor_bad(absl::StrCat("unknown dtype '", e.dtype_name, "'"));
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return tensor_bad("shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > (uint64_t{1} << 48) / dim) return tensor_bad("shape overflows");
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end)
      return tensor_bad(absl::StrCat("data_offsets [", begin, ", ", end, ") are reversed"));
    if (end > data_size) {
      return tensor_bad(absl::StrCat("data_offsets [", begin, ", ", end,
                                     ") run past the end of the data (", data_size, " bytes)"));
    }
    if (end - begin != numel * elem) {
      return tensor_bad(absl::StrCat("data_offsets span ", end - begin, " bytes but shape ",
                                     ShapeString(e.shape), " of ", e.dtype_name, " needs ",
                                     numel * elem));
    }
    e.begin = data_start + begin;
    e.end = data_start + end;
    if (end > begin) ranges.emplace_back(begin, end);
    st->entries_.emplace(name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return bad(absl::StrCat("tensors overlap: byte ranges [", ranges[i - 1].first, ", ",
                              ranges[i - 1].second, ") and [", ranges[i].first, ", ",
                              ranges[i].second, ")"));
    }
  }
  return st;
}

bool SafetensorsFile::Has(const std::string& name) const { return entries_.count(name) > 0; }

absl::StatusOr<TensorRef> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat(file_->path(), ": no tensor named '", name, "'"));
  }
  const Entry& e = it->second;
  auto dt = ParseDType(e.dtype_name);
  if (!dt.has_value() || IsQuantized(*dt)) {
    return absl::InvalidArgumentError(absl::StrCat(file_->path(), ": tensor '", name,
                                                   "' has unsupported dtype ", e.dtype_name,
                                                   " (supported: F32, F16, BF16)"));
  }
  TensorRef t;
  t.name = name;
  t.dtype = *dt;
  t.shape = e.shape;
  t.data = file_->data() + e.begin;
  t.nbytes = e.end - e.begin;
  return t;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  for (const auto& [k, v] : entries_) names.push_back(k);
  return names;
}

namespace {

// The shards of an index.json, each opened once.
class ShardedSafetensors : public WeightSource {
 public:
  bool Has(const std::string& name) const override { return owner_.count(name) > 0; }
  absl::StatusOr<TensorRef> Get(const std::string& name) const override {
    auto it = owner_.find(name);
    if (it == owner_.end()) {
      return absl::NotFoundError(absl::StrCat("no tensor named '", name, "' in the weight_map"));
    }
    return it->second->Get(name);
  }
  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    for (const auto& [k, v] : owner_) names.push_back(k);
    return names;
  }

  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> owner_;
};

}  // namespace

size_t TensorSpec::nbytes() const {
  size_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                              const std::function<void(size_t, uint8_t*)>& fill,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const TensorSpec& s : specs) {
    header[s.name] = {{"dtype", std::string(DTypeName(s.dtype))},
                      {"shape", s.shape},
                      {"data_offsets", {offset, offset + s.nbytes()}}};
    offset += s.nbytes();
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot create ", path));
  const uint64_t len = text.size();
  bool ok =
      std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  std::vector<uint8_t> buf;
  for (size_t i = 0; ok && i < specs.size(); ++i) {
    buf.resize(specs[i].nbytes());
    fill(i, buf.data());
    ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return absl::DataLossError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsFolder(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  std::error_code ec;
  if (fs::exists(single, ec)) {
    ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(single.string()));
    return std::unique_ptr<WeightSource>(std::move(f));
  }
  if (!fs::exists(index, ec)) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index.string()));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
      !j["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index.string(), ": expected an object with a 'weight_map' object"));
  }
  auto out = std::make_unique<ShardedSafetensors>();
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index.string(), ": weight_map['", it.key(), "'] is not a file name"));
    }
    const std::string file = it->get<std::string>();
    if (file.find('/') != std::string::npos || file == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(index.string(), ": shard name '", file, "' must be a plain file name"));
    }
    auto& shard = out->files_[file];
    if (!shard) {
      ASSIGN_OR_RETURN(shard, SafetensorsFile::Open((fs::path(dir) / file).string()));
    }
    if (!shard->Has(it.key())) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": tensor '", it.key(),
                                                     "' is mapped to ", file,
                                                     ", which does not contain it"));
    }
    out->owner_[it.key()] = shard.get();
  }
  return std::unique_ptr<WeightSource>(std::move(out));
}

}  // namespace shardserve
