#include "model/gguf_export.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "kernels/quant_format.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/gguf_writer.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using Json = nlohmann::json;

using gguf_token::kByte;
using gguf_token::kControl;
using gguf_token::kNormal;
using gguf_token::kUnknown;
using gguf_token::kUnused;
using gguf_token::kUserDefined;

struct GgmlOut {
  uint32_t tensor_type;
  uint32_t file_type;  // general.file_type (llama_ftype)
};

absl::StatusOr<GgmlOut> OutputType(DType d) {
  switch (d) {
    case DType::kF32:
      return GgmlOut{0, 0};
    case DType::kF16:
      return GgmlOut{1, 1};
    case DType::kBF16:
      return GgmlOut{30, 32};
    case DType::kQ8_0:
      return GgmlOut{8, 7};
    case DType::kQ4_0:
      return GgmlOut{2, 2};
    default:
      return absl::InvalidArgumentError(absl::StrCat("cannot export as ", DTypeName(d),
                                                     " (supported: f32, f16, bf16, q8_0, q4_0)"));
  }
}

bool IsByteToken(const std::string& piece) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return piece.size() == 6 && absl::StartsWith(piece, "<0x") && piece[5] == '>' && hex(piece[3]) &&
         hex(piece[4]);
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int32_t unk_id = -1;
  bool add_space_prefix = true;
};

// A tokenizer.json BPE model with byte_fallback as llama.cpp's `llama` vocabulary: merge
// results score by merge rank (earlier merges first, as the BPE applies them); other tokens score
// below every merge.
absl::StatusOr<Vocab> VocabFromTokenizerJson(const std::string& path, int64_t vocab_size) {
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  Json tj = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object()) {
    return bad("not a tokenizer.json (no \"model\" object)");
  }
  const Json& model = tj["model"];
  if (model.value("type", std::string()) != "BPE" || !model.value("byte_fallback", false)) {
    return absl::UnimplementedError(
        absl::StrCat(path,
                     ": export-gguf writes SentencePiece-style vocabularies (a BPE model with "
                     "byte_fallback, as Llama-2 and TinyLlama have); this tokenizer is a ",
                     model.value("type", std::string("?")), " model",
                     model.value("byte_fallback", false) ? "" : " without byte_fallback"));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) return bad("model.vocab is missing");
  std::map<int64_t, std::pair<std::string, int32_t>> by_id;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer()) return bad("model.vocab has a non-integer id");
    by_id[it.value().get<int64_t>()] = {it.key(), IsByteToken(it.key()) ? kByte : kNormal};
  }
  const std::string unk = model.value("unk_token", std::string());
  for (const Json& a : tj.value("added_tokens", Json::array())) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
        !a.contains("content") || !a["content"].is_string()) {
      return bad("added_tokens has an entry without an integer id and a string content");
    }
    const std::string content = a["content"].get<std::string>();
    by_id[a["id"].get<int64_t>()] = {content, content == unk              ? kUnknown
                                              : a.value("special", false) ? kControl
                                                                          : kUserDefined};
  }
  if (by_id.empty() || by_id.begin()->first < 0) return bad("the vocabulary has a negative id");
  const int64_t n = by_id.rbegin()->first + 1;
  if (n > vocab_size) {
    return bad(absl::StrCat("the vocabulary has ", n, " ids, more than config.json's vocab_size ",
                            vocab_size));
  }
  Vocab v;
  v.tokens.resize(vocab_size);
  v.types.assign(vocab_size, kUnused);
  v.scores.assign(vocab_size, 0.0f);
  std::map<std::string, int32_t> id_of;
  for (int64_t i = 0; i < vocab_size; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {
      v.tokens[i] = absl::StrCat("<unused_", i, ">");  // llama.cpp needs one token per row
      continue;
    }
    v.tokens[i] = it->second.first;
    v.types[i] = it->second.second;
    id_of.emplace(v.tokens[i], static_cast<int32_t>(i));
    if (v.tokens[i] == unk) v.unk_id = static_cast<int32_t>(i);
  }
  const Json merges = model.value("merges", Json::array());
  const float floor = -static_cast<float>(merges.size()) - 1.0f;
  for (int64_t i = 0; i < vocab_size; ++i) {
    if (v.types[i] == kNormal) v.scores[i] = floor;
  }
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& m = merges[rank];
    std::string joined;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return bad(absl::StrCat("merge \"", s, "\" has no space"));
      joined = s.substr(0, sp) + s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      joined = m[0].get<std::string>() + m[1].get<std::string>();
    } else {
      return bad(absl::StrCat("merge ", rank, " is neither \"a b\" nor [a, b]"));
    }
    if (auto it = id_of.find(joined); it != id_of.end() && v.types[it->second] == kNormal) {
      v.scores[it->second] = std::max(v.scores[it->second], -static_cast<float>(rank));
    }
  }
  // SentencePiece's dummy prefix: a normalizer that prepends "▁", or a Metaspace pre-tokenizer
  // that does.
  const std::string norm = tj.value("normalizer", Json()).dump();
  const std::string pre = tj.value("pre_tokenizer", Json()).dump();
  v.add_space_prefix = absl::StrContains(norm, "\"Prepend\"") ||
                       (absl::StrContains(pre, "\"Metaspace\"") &&
                        !absl::StrContains(pre, "\"prepend_scheme\":\"never\""));
  return v;
}

// The tensor as F32 values, widened from F32, F16 or BF16.
absl::StatusOr<std::vector<float>> ToF32(const TensorRef& t) {
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' is ", DTypeName(t.dtype),
                                                   "; export-gguf reads F32, F16 and BF16"));
  }
  std::vector<float> out(t.numel());
  DequantizeRow(t.dtype, t.data, t.numel(), out.data());
  return out;
}

void Encode(const std::vector<float>& v, int64_t cols, DType dtype, std::string* out) {
  const size_t start = out->size();
  switch (dtype) {
    case DType::kF32:
      out->append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
      return;
    case DType::kF16:
    case DType::kBF16: {
      out->resize(start + v.size() * 2);
      auto* h = reinterpret_cast<uint16_t*>(out->data() + start);
      for (size_t i = 0; i < v.size(); ++i) {
        h[i] = dtype == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
      }
      return;
    }
    default: {  // Q8_0 / Q4_0, row by row
      const int64_t rows = static_cast<int64_t>(v.size()) / cols;
      const size_t row_bytes = RowBytes(dtype, cols);
      out->resize(start + rows * row_bytes);
      for (int64_t r = 0; r < rows; ++r) {
        QuantizeRow(dtype, &v[r * cols], cols, out->data() + start + r * row_bytes);
      }
    }
  }
}

}  // namespace

absl::Status ExportGguf(const std::string& model_dir, const std::string& out_path,
                        const GgufExportOptions& options) {
  ASSIGN_OR_RETURN(const GgmlOut out_type, OutputType(options.dtype));
  ASSIGN_OR_RETURN(const ModelConfig c, ModelConfig::FromFile(model_dir + "/config.json"));
  if (c.architecture != Architecture::kLlama) {
    return absl::UnimplementedError(absl::StrCat(
        model_dir, "/config.json: export-gguf writes the llama architecture; this model is ",
        ArchitectureName(c.architecture)));
  }
  if (c.qkv_bias) {
    return absl::UnimplementedError(
        absl::StrCat(model_dir, "/config.json: attention biases are not exported"));
  }
  if (c.rope_scaling.type != RopeScaling::Type::kNone &&
      c.rope_scaling.type != RopeScaling::Type::kLinear) {
    return absl::UnimplementedError(
        absl::StrCat(model_dir,
                     "/config.json: only linear rope_scaling is exported (llama3 and yarn need "
                     "llama.cpp's own converter)"));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", c.head_dim, " is odd"));
  }
  const bool quantized = IsQuantized(options.dtype);
  if (quantized && (c.hidden_size % 32 != 0 || c.intermediate_size % 32 != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden_size ", c.hidden_size, " and intermediate_size ", c.intermediate_size,
                     " must be multiples of 32 for ", DTypeName(options.dtype)));
  }
  ASSIGN_OR_RETURN(Vocab vocab,
                   VocabFromTokenizerJson(model_dir + "/tokenizer.json", c.vocab_size));
  bool add_bos = true;
  if (auto tc = ReadFileToString(model_dir + "/tokenizer_config.json"); tc.ok()) {
    Json j = Json::parse(*tc, nullptr, false);
    if (j.is_object() && j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) {
      add_bos = j["add_bos_token"].get<bool>();
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> weights, OpenSafetensorsFolder(model_dir));
  std::shared_ptr<const WeightSource> w(std::move(weights));

  GgufWriter g;
  g.SetString("general.architecture", "llama");
  std::string name = model_dir;
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  g.SetString("general.name", name.substr(name.find_last_of('/') + 1));
  g.SetUint32("general.file_type", out_type.file_type);
  g.SetUint32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
  g.SetUint32("llama.context_length", static_cast<uint32_t>(c.max_position_embeddings));
  g.SetUint32("llama.embedding_length", static_cast<uint32_t>(c.hidden_size));
  g.SetUint32("llama.block_count", static_cast<uint32_t>(c.num_layers));
  g.SetUint32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  g.SetUint32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  g.SetUint32("llama.attention.head_count", static_cast<uint32_t>(c.num_heads));
  g.SetUint32("llama.attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    g.SetUint32("llama.attention.key_length", static_cast<uint32_t>(c.head_dim));
    g.SetUint32("llama.attention.value_length", static_cast<uint32_t>(c.head_dim));
  }
  g.SetFloat32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  g.SetFloat32("llama.rope.freq_base", static_cast<float>(c.rope_theta));
  if (c.rope_scaling.type == RopeScaling::Type::kLinear) {
    g.SetString("llama.rope.scaling.type", "linear");
    g.SetFloat32("llama.rope.scaling.factor", static_cast<float>(c.rope_scaling.factor));
  }
  g.SetString("tokenizer.ggml.model", "llama");
  g.SetStringArray("tokenizer.ggml.tokens", vocab.tokens);
  g.SetFloat32Array("tokenizer.ggml.scores", vocab.scores);
  g.SetInt32Array("tokenizer.ggml.token_type", vocab.types);
  if (c.bos_token_id >= 0) g.SetUint32("tokenizer.ggml.bos_token_id", c.bos_token_id);
  if (!c.eos_token_ids.empty()) g.SetUint32("tokenizer.ggml.eos_token_id", c.eos_token_ids[0]);
  if (vocab.unk_id >= 0) g.SetUint32("tokenizer.ggml.unknown_token_id", vocab.unk_id);
  g.SetBool("tokenizer.ggml.add_bos_token", add_bos);
  g.SetBool("tokenizer.ggml.add_eos_token", false);
  g.SetBool("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix);

  // A matrix of `rows` x `cols` (Hugging Face order); `heads` > 0 for q/k projections.
  auto matrix = [&](const std::string& hf, int64_t rows, int64_t cols,
                    int64_t heads) -> absl::Status {
    ASSIGN_OR_RETURN(TensorRef t, w->GetWithShape(hf, {rows, cols}));
    (void)t;
    const DType dt = options.dtype;
    g.AddTensor(GgufTensorName(hf), out_type.tensor_type, {cols, rows}, RowBytes(dt, cols) * rows,
                [w, hf, rows, cols, heads, dt](std::string* bytes) -> absl::Status {
                  ASSIGN_OR_RETURN(TensorRef t, w->Get(hf));
                  ASSIGN_OR_RETURN(std::vector<float> v, ToF32(t));
                  if (heads > 0) {
                    std::vector<float> p(v.size());
                    PermuteRopeRows(v.data(), p.data(), rows, cols * sizeof(float), heads,
                                    /*to_interleaved=*/true);
                    v = std::move(p);
                  }
                  Encode(v, cols, dt, bytes);
                  return absl::OkStatus();
                });
    return absl::OkStatus();
  };
  auto norm = [&](const std::string& hf, int64_t n) -> absl::Status {
    RETURN_IF_ERROR(w->GetVectorF32(hf, n).status());
    g.AddTensor(GgufTensorName(hf), 0, {n}, n * sizeof(float),
                [w, hf, n](std::string* bytes) -> absl::Status {
                  ASSIGN_OR_RETURN(std::vector<float> v, w->GetVectorF32(hf, n));
                  bytes->append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
                  return absl::OkStatus();
                });
    return absl::OkStatus();
  };
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  RETURN_IF_ERROR(matrix("model.embed_tokens.weight", c.vocab_size, h, 0));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    RETURN_IF_ERROR(norm(p + "input_layernorm.weight", h));
    RETURN_IF_ERROR(matrix(p + "self_attn.q_proj.weight", q, h, c.num_heads));
    RETURN_IF_ERROR(matrix(p + "self_attn.k_proj.weight", kv, h, c.num_kv_heads));
    RETURN_IF_ERROR(matrix(p + "self_attn.v_proj.weight", kv, h, 0));
    RETURN_IF_ERROR(matrix(p + "self_attn.o_proj.weight", h, q, 0));
    RETURN_IF_ERROR(norm(p + "post_attention_layernorm.weight", h));
    RETURN_IF_ERROR(matrix(p + "mlp.gate_proj.weight", c.intermediate_size, h, 0));
    RETURN_IF_ERROR(matrix(p + "mlp.up_proj.weight", c.intermediate_size, h, 0));
    RETURN_IF_ERROR(matrix(p + "mlp.down_proj.weight", h, c.intermediate_size, 0));
  }
  RETURN_IF_ERROR(norm("model.norm.weight", h));
  if (!c.tie_word_embeddings) RETURN_IF_ERROR(matrix("lm_head.weight", c.vocab_size, h, 0));
  return g.Write(out_path, options.progress);
}

}  // namespace shardserve
