#include "model/gguf_model.h"

#include <cstring>
#include <map>
#include "absl/synchronization/mutex.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace shardserve {
namespace {

// ggml type ids of the tensor types this loader serves.
constexpr uint32_t kGgmlF32 = 0;
constexpr uint32_t kGgmlF16 = 1;
constexpr uint32_t kGgmlBF16 = 30;
constexpr uint32_t kGgmlQ4_0 = 2;
constexpr uint32_t kGgmlQ5_0 = 6;
constexpr uint32_t kGgmlQ5_1 = 7;
constexpr uint32_t kGgmlQ8_0 = 8;
constexpr uint32_t kGgmlQ4_K = 12;
constexpr uint32_t kGgmlQ5_K = 13;
constexpr uint32_t kGgmlQ6_K = 14;
constexpr uint32_t kGgmlIQ4_NL = 20;

class GgufWeights : public WeightSource {
 public:
  GgufWeights(std::shared_ptr<const GgufFile> file, const ModelConfig& config)
      : file_(std::move(file)), config_(config) {}

  bool Has(const std::string& name) const override {
    const std::string g = GgufTensorName(name);
    return !g.empty() && file_->tensor(g) != nullptr;
  }

  absl::StatusOr<TensorRef> Get(const std::string& name) const override {
    const std::string g = GgufTensorName(name);
    const GgufTensorInfo* info = g.empty() ? nullptr : file_->tensor(g);
    if (info == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(file_->path(), ": no tensor '", g.empty() ? name : g, "' (for ", name, ")"));
    }
    TensorRef t;
    t.name = name;
    switch (info->ggml_type) {
      case kGgmlF32:
        t.dtype = DType::kF32;
        break;
      case kGgmlF16:
        t.dtype = DType::kF16;
        break;
      case kGgmlBF16:
        t.dtype = DType::kBF16;
        break;
      case kGgmlQ8_0:
        t.dtype = DType::kQ8_0;
        break;
      case kGgmlQ4_0:
        t.dtype = DType::kQ4_0;
        break;
      case kGgmlQ5_0:
        t.dtype = DType::kQ5_0;
        break;
      case kGgmlQ5_1:
        t.dtype = DType::kQ5_1;
        break;
      case kGgmlQ4_K:
        t.dtype = DType::kQ4_K;
        break;
      case kGgmlQ5_K:
        t.dtype = DType::kQ5_K;
        break;
      case kGgmlIQ4_NL:
        t.dtype = DType::kIQ4_NL;
        break;
      case kGgmlQ6_K:
        t.dtype = DType::kQ6_K;
        break;
      default: {
        const GgmlTypeInfo* ti = GgmlType(info->ggml_type);
        return absl::UnimplementedError(
            absl::StrCat(file_->path(), ": tensor '", g, "' has type ", ti ? ti->name : "unknown",
                         " (id ", info->ggml_type,
                         "); this build reads F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1, IQ4_NL, "
                         "Q4_K, Q5_K and Q6_K GGUF tensors"));
      }
    }
    t.shape.assign(info->dims.rbegin(), info->dims.rend());  // GGUF lists the fastest dim first
    if (!t.shape.empty() && t.shape.back() % DTypeBlockElems(t.dtype) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(file_->path(), ": tensor '", g, "' rows of ",
                                                     t.shape.back(), " values do not fill whole ",
                                                     DTypeName(t.dtype), " blocks"));
    }
    t.data = info->data;
    t.nbytes = info->size_bytes;
    const int heads = RopePermutedHeads(name);
    if (heads > 0 && t.shape.size() == 2) {
      absl::MutexLock lock(&mu_);
      auto& buf = permuted_[name];
      if (buf.empty()) {
        RETURN_IF_ERROR(Unpermute(t, heads, &buf));
      }
      t.data = buf.data();
    }
    return t;
  }

  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    for (const auto& t : file_->tensors()) names.push_back(t.name);
    return names;
  }

 private:
  // Llama's q/k rows are stored in interleaved-pair order; other architectures are not.
  int RopePermutedHeads(const std::string& name) const {
    if (config_.architecture != Architecture::kLlama) return 0;
    if (absl::EndsWith(name, "self_attn.q_proj.weight")) return static_cast<int>(config_.num_heads);
    if (absl::EndsWith(name, "self_attn.k_proj.weight"))
      return static_cast<int>(config_.num_kv_heads);
    return 0;
  }

  static absl::Status Unpermute(const TensorRef& t, int heads, std::vector<uint8_t>* out) {
    const int64_t rows = t.shape[0], cols = t.shape[1];
    if (rows % heads != 0 || (rows / heads) % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has ", rows,
                                                     " rows, not a multiple of ", heads,
                                                     " heads of even size"));
    }
    out->resize(t.nbytes);
    PermuteRopeRows(t.data, out->data(), rows, RowBytes(t.dtype, cols), heads,
                    /*to_interleaved=*/false);
    return absl::OkStatus();
  }

  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  mutable absl::Mutex mu_;
  mutable std::map<std::string, std::vector<uint8_t>> permuted_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::string GgufTensorName(const std::string& hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  if (auto it = kGlobal.find(hf); it != kGlobal.end()) return it->second;
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  constexpr absl::string_view kPrefix = "model.layers.";
  if (!absl::StartsWith(hf, kPrefix)) return "";
  const std::string rest = hf.substr(kPrefix.size());
  const size_t dot = rest.find('.');
  if (dot == std::string::npos) return "";
  int layer;
  if (!absl::SimpleAtoi(rest.substr(0, dot), &layer)) return "";
  auto it = kLayer.find(rest.substr(dot + 1));
  if (it == kLayer.end()) return "";
  return absl::StrCat("blk.", layer, ".", it->second);
}

void PermuteRopeRows(const void* src, void* dst, int64_t rows, size_t row_bytes, int64_t heads,
                     bool to_interleaved) {
  const auto* in = static_cast<const uint8_t*>(src);
  auto* out = static_cast<uint8_t*>(dst);
  const int64_t d = rows / heads;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < d / 2; ++j) {
      for (int64_t i = 0; i < 2; ++i) {
        const int64_t interleaved = h * d + 2 * j + i;
        const int64_t rotate_half = h * d + i * (d / 2) + j;
        const int64_t from = to_interleaved ? rotate_half : interleaved;
        const int64_t to = to_interleaved ? interleaved : rotate_half;
        std::memcpy(out + to * row_bytes, in + from * row_bytes, row_bytes);
      }
    }
  }
}

bool IsGgufPath(const std::string& path) { return absl::EndsWith(path, ".gguf"); }

absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& f) {
  ASSIGN_OR_RETURN(const std::string arch, f.GetString("general.architecture"));
  ModelConfig c;
  if (arch == "llama") {
    c.architecture = Architecture::kLlama;
  } else if (arch == "qwen2") {
    c.architecture = Architecture::kQwen2;
    c.qkv_bias = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": unsupported general.architecture '",
                                                   arch, "' (supported: llama, qwen2)"));
  }
  c.model_type = arch;
  auto positive = [&](const std::string& key, int64_t* out) -> absl::Status {
    ASSIGN_OR_RETURN(int64_t v, f.GetInt(absl::StrCat(arch, ".", key)));
    if (v <= 0 || v > (int64_t{1} << 31)) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.path(), ": ", arch, ".", key, " = ", v, " is out of range"));
    }
    *out = v;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(positive("embedding_length", &c.hidden_size));
  RETURN_IF_ERROR(positive("feed_forward_length", &c.intermediate_size));
  RETURN_IF_ERROR(positive("block_count", &c.num_layers));
  RETURN_IF_ERROR(positive("attention.head_count", &c.num_heads));
  c.num_kv_heads = c.num_heads;
  if (f.Has(absl::StrCat(arch, ".attention.head_count_kv"))) {
    RETURN_IF_ERROR(positive("attention.head_count_kv", &c.num_kv_heads));
  }
  RETURN_IF_ERROR(positive("context_length", &c.max_position_embeddings));
  if (c.hidden_size % c.num_heads != 0 || c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": head counts ", c.num_heads, "/",
                                                   c.num_kv_heads, " do not divide ",
                                                   c.hidden_size));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  if (f.Has(absl::StrCat(arch, ".attention.key_length"))) {
    RETURN_IF_ERROR(positive("attention.key_length", &c.head_dim));
  }
  if (auto eps = f.GetFloat(absl::StrCat(arch, ".attention.layer_norm_rms_epsilon")); eps.ok()) {
    if (!(*eps > 0 && *eps < 1)) return absl::InvalidArgumentError("rms epsilon out of range");
    c.rms_norm_eps = *eps;
  }
  if (auto base = f.GetFloat(absl::StrCat(arch, ".rope.freq_base")); base.ok()) {
    if (!(*base > 0)) return absl::InvalidArgumentError("rope.freq_base must be positive");
    c.rope_theta = *base;
  }
  if (auto type = f.GetString(absl::StrCat(arch, ".rope.scaling.type"));
      type.ok() && *type == "linear") {
    ASSIGN_OR_RETURN(double factor, f.GetFloat(absl::StrCat(arch, ".rope.scaling.factor")));
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    c.rope_scaling.factor = factor;
  }
  const GgufTensorInfo* embed = f.tensor("token_embd.weight");
  if (embed == nullptr || embed->dims.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": missing 2-D tensor token_embd.weight"));
  }
  c.vocab_size = embed->dims[1];
  c.tie_word_embeddings = f.tensor("output.weight") == nullptr;
  if (auto bos = f.GetInt("tokenizer.ggml.bos_token_id");
      bos.ok() && *bos >= 0 && *bos < c.vocab_size) {
    c.bos_token_id = static_cast<int32_t>(*bos);
  }
  if (auto eos = f.GetInt("tokenizer.ggml.eos_token_id");
      eos.ok() && *eos >= 0 && *eos < c.vocab_size) {
    c.eos_token_ids = {static_cast<int32_t>(*eos)};
  }
  const uint32_t t = embed->ggml_type;
  c.dtype = t == kGgmlF16 ? DType::kF16 : t == kGgmlBF16 ? DType::kBF16 : DType::kF32;
  c.mixed_dtypes = true;
  return c;
}

std::unique_ptr<WeightSource> NewGgufWeightSource(std::shared_ptr<const GgufFile> file,
                                                  const ModelConfig& config) {
  return std::make_unique<GgufWeights>(std::move(file), config);
}

}  // namespace shardserve
