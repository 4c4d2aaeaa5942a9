#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using nlohmann::json;

class Reader {
 public:
  Reader(const json& j, absl::string_view source) : j_(j), source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", field, "' ", what));
  }

  // A positive integer field; `fallback` < 0 means required.
  absl::StatusOr<int64_t> PositiveInt(const char* field, int64_t fallback = -1) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) {
      if (fallback < 0) return Error(field, "is missing");
      return fallback;
    }
    if (!it->is_number_integer()) return Error(field, "must be an integer");
    const int64_t v = it->get<int64_t>();
    if (v <= 0) return Error(field, absl::StrCat("must be positive, got ", v));
    if (v > (int64_t{1} << 31)) return Error(field, absl::StrCat("is implausibly large: ", v));
    return v;
  }

  // A non-negative integer field (0 allowed), `fallback` when missing or null.
  absl::StatusOr<int64_t> NonNegativeInt(const char* field, int64_t fallback) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_number_integer()) return Error(field, "must be an integer");
    const int64_t v = it->get<int64_t>();
    if (v < 0) return Error(field, absl::StrCat("must not be negative, got ", v));
    if (v > (int64_t{1} << 31)) return Error(field, absl::StrCat("is implausibly large: ", v));
    return v;
  }

  // A string field, `fallback` when missing or null.
  absl::StatusOr<std::string> String(const char* field, const std::string& fallback) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_string()) return Error(field, "must be a string");
    return it->get<std::string>();
  }

  absl::StatusOr<double> PositiveFloat(const char* field, double fallback) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_number()) return Error(field, "must be a number");
    const double v = it->get<double>();
    if (!std::isfinite(v) || v <= 0) return Error(field, absl::StrCat("must be positive, got ", v));
    return v;
  }

  absl::StatusOr<bool> Bool(const char* field, bool fallback) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return Error(field, "must be true or false");
    return it->get<bool>();
  }

 private:
  const json& j_;
  std::string source_;  // owned: callers pass temporaries such as StrCat(file, " rope_scaling")
};

absl::StatusOr<Architecture> DetectArchitecture(const json& j, absl::string_view source,
                                                std::string* model_type) {
  std::string arch_name;
  if (auto it = j.find("architectures");
      it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    arch_name = (*it)[0].get<std::string>();
  }
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) {
    *model_type = it->get<std::string>();
  }
  if (arch_name == "LlamaForCausalLM" || *model_type == "llama") return Architecture::kLlama;
  if (arch_name == "MistralForCausalLM" || *model_type == "mistral") return Architecture::kMistral;
  if (arch_name == "Qwen2ForCausalLM" || *model_type == "qwen2") return Architecture::kQwen2;
  if (arch_name == "DeepseekV2ForCausalLM" || *model_type == "deepseek_v2") {
    return Architecture::kDeepseekV2;
  }
  if (arch_name == "DeepseekV3ForCausalLM" || *model_type == "deepseek_v3") {
    return Architecture::kDeepseekV3;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": unsupported architecture '", arch_name.empty() ? *model_type : arch_name,
      "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
      "DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)"));
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const json& j, absl::string_view source) {
  RopeScaling rs;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return rs;
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field 'rope_scaling' must be an object"));
  }
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (auto t = it->find(key); t != it->end() && t->is_string()) {
      type = t->get<std::string>();
      break;
    }
  }
  Reader r(*it, absl::StrCat(source, " rope_scaling"));
  if (type == "default") return rs;
  if (type == "linear") {
    rs.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    rs.type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(rs.low_freq_factor, r.PositiveFloat("low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(rs.high_freq_factor, r.PositiveFloat("high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(rs.original_max_position_embeddings,
                     r.PositiveInt("original_max_position_embeddings", 8192));
    if (rs.high_freq_factor <= rs.low_freq_factor) {
      return r.Error("high_freq_factor", "must be greater than low_freq_factor");
    }
  } else if (type == "yarn") {
    rs.type = RopeScaling::Type::kYarn;
    ASSIGN_OR_RETURN(rs.original_max_position_embeddings,
                     r.PositiveInt("original_max_position_embeddings", 4096));
    ASSIGN_OR_RETURN(rs.beta_fast, r.PositiveFloat("beta_fast", 32.0));
    ASSIGN_OR_RETURN(rs.beta_slow, r.PositiveFloat("beta_slow", 1.0));
    ASSIGN_OR_RETURN(rs.mscale, r.PositiveFloat("mscale", 1.0));
    if (auto m = it->find("mscale_all_dim");
        m != it->end() && m->is_number() && m->get<double>() == 0.0) {
      rs.mscale_all_dim = 0.0;
    } else {
      ASSIGN_OR_RETURN(rs.mscale_all_dim, r.PositiveFloat("mscale_all_dim", 0.0));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported rope_scaling type '",
                                                   type, "' (supported: linear, llama3, yarn)"));
  }
  ASSIGN_OR_RETURN(rs.factor, r.PositiveFloat("factor", -1.0));
  if (rs.factor < 0) return r.Error("factor", "is missing");
  return rs;
}

// The MLA and MoE fields of a deepseek_v2 / deepseek_v3 config, with the defaults of the
// Hugging Face configuration classes of each version.
absl::StatusOr<DeepseekConfig> ParseDeepseek(const Reader& r, bool v3, int64_t num_layers) {
  DeepseekConfig d;
  ASSIGN_OR_RETURN(d.q_lora_rank, r.NonNegativeInt("q_lora_rank", 0));
  ASSIGN_OR_RETURN(d.kv_lora_rank, r.PositiveInt("kv_lora_rank"));
  ASSIGN_OR_RETURN(d.qk_nope_head_dim, r.PositiveInt("qk_nope_head_dim"));
  ASSIGN_OR_RETURN(d.qk_rope_head_dim, r.PositiveInt("qk_rope_head_dim"));
  ASSIGN_OR_RETURN(d.v_head_dim, r.PositiveInt("v_head_dim"));
  if (d.qk_rope_head_dim % 2 != 0) {
    return r.Error("qk_rope_head_dim", "must be even for rotary embeddings");
  }
  ASSIGN_OR_RETURN(d.n_routed_experts, r.NonNegativeInt("n_routed_experts", 0));
  ASSIGN_OR_RETURN(d.n_shared_experts, r.NonNegativeInt("n_shared_experts", 0));
  ASSIGN_OR_RETURN(d.first_k_dense_replace, r.NonNegativeInt("first_k_dense_replace", 0));
  ASSIGN_OR_RETURN(d.moe_layer_freq, r.PositiveInt("moe_layer_freq", 1));
  ASSIGN_OR_RETURN(d.num_nextn_predict_layers, r.NonNegativeInt("num_nextn_predict_layers", 0));
  ASSIGN_OR_RETURN(d.routed_scaling_factor,
                   r.PositiveFloat("routed_scaling_factor", v3 ? 2.5 : 1.0));
  ASSIGN_OR_RETURN(d.norm_topk_prob, r.Bool("norm_topk_prob", v3));
  if (d.n_routed_experts > 0) {
    ASSIGN_OR_RETURN(d.num_experts_per_tok, r.PositiveInt("num_experts_per_tok"));
    ASSIGN_OR_RETURN(d.moe_intermediate_size, r.PositiveInt("moe_intermediate_size"));
    if (d.num_experts_per_tok > d.n_routed_experts) {
      return r.Error("num_experts_per_tok", "exceeds n_routed_experts");
    }
    ASSIGN_OR_RETURN(std::string scoring, r.String("scoring_func", v3 ? "sigmoid" : "softmax"));
    if (scoring == "softmax") {
      d.scoring = DeepseekConfig::Scoring::kSoftmax;
    } else if (scoring == "sigmoid") {
      d.scoring = DeepseekConfig::Scoring::kSigmoid;
    } else {
      return r.Error("scoring_func",
                     absl::StrCat("'", scoring, "' is unsupported (softmax, sigmoid)"));
    }
    ASSIGN_OR_RETURN(std::string method, r.String("topk_method", v3 ? "noaux_tc" : "greedy"));
    if (method == "greedy") {
      d.topk_method = DeepseekConfig::TopkMethod::kGreedy;
    } else if (method == "group_limited_greedy") {
      d.topk_method = DeepseekConfig::TopkMethod::kGroupLimitedGreedy;
    } else if (method == "noaux_tc") {
      d.topk_method = DeepseekConfig::TopkMethod::kNoAuxTc;
    } else {
      return r.Error(
          "topk_method",
          absl::StrCat("'", method, "' is unsupported (greedy, group_limited_greedy, noaux_tc)"));
    }
    if (d.topk_method != DeepseekConfig::TopkMethod::kGreedy) {
      ASSIGN_OR_RETURN(d.n_group, r.PositiveInt("n_group"));
      ASSIGN_OR_RETURN(d.topk_group, r.PositiveInt("topk_group"));
      if (d.n_routed_experts % d.n_group != 0) {
        return r.Error("n_group", "must divide n_routed_experts");
      }
      if (d.topk_group > d.n_group) return r.Error("topk_group", "exceeds n_group");
      const int64_t per_group = d.n_routed_experts / d.n_group;
      if (d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc && per_group < 2) {
        return r.Error("n_group",
                       "leaves fewer than 2 experts per group (noaux_tc ranks groups "
                       "by their two best experts)");
      }
      if (d.topk_group * per_group < d.num_experts_per_tok) {
        return r.Error("topk_group", "selects fewer experts than num_experts_per_tok");
      }
    }
  }
  if (d.first_k_dense_replace > num_layers) {
    return r.Error("first_k_dense_replace", "exceeds num_hidden_layers");
  }
  return d;
}

absl::StatusOr<std::vector<int32_t>> ParseEos(const json& j, absl::string_view source) {
  std::vector<int32_t> out;
  auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return out;
  auto add = [&](const json& v) -> absl::Status {
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": field 'eos_token_id' must be a non-negative integer or a list"));
    }
    out.push_back(static_cast<int32_t>(v.get<int64_t>()));
    return absl::OkStatus();
  };
  if (it->is_array()) {
    for (const auto& v : *it) RETURN_IF_ERROR(add(v));
  } else {
    RETURN_IF_ERROR(add(*it));
  }
  return out;
}

}  // namespace

absl::string_view ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kLlama:
      return "LlamaForCausalLM";
    case Architecture::kMistral:
      return "MistralForCausalLM";
    case Architecture::kQwen2:
      return "Qwen2ForCausalLM";
    case Architecture::kDeepseekV2:
      return "DeepseekV2ForCausalLM";
    case Architecture::kDeepseekV3:
      return "DeepseekV3ForCausalLM";
  }
  return "?";
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(absl::string_view text,
                                                  absl::string_view source) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not valid JSON (note: NaN and Infinity are not JSON)"));
  }
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, DetectArchitecture(j, source, &c.model_type));
  Reader r(j, source);
  ASSIGN_OR_RETURN(c.hidden_size, r.PositiveInt("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, r.PositiveInt("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, r.PositiveInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, r.PositiveInt("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_kv_heads, r.PositiveInt("num_key_value_heads", c.num_heads));
  if (c.is_deepseek()) {
    ASSIGN_OR_RETURN(c.deepseek,
                     ParseDeepseek(r, c.architecture == Architecture::kDeepseekV3, c.num_layers));
    if (c.num_kv_heads != c.num_heads) {
      return r.Error("num_key_value_heads", "must equal num_attention_heads for MLA");
    }
    // The query/key head: a non-rotary part and a rotary part.
    c.head_dim = c.deepseek.qk_nope_head_dim + c.deepseek.qk_rope_head_dim;
  } else if (c.hidden_size % c.num_heads != 0 && !j.contains("head_dim")) {
    return r.Error("num_attention_heads", "must divide hidden_size when head_dim is not given");
  }
  if (!c.is_deepseek()) {
    ASSIGN_OR_RETURN(c.head_dim, r.PositiveInt("head_dim", c.hidden_size / c.num_heads));
    if (c.head_dim % 2 != 0) return r.Error("head_dim", "must be even for rotary embeddings");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error("num_key_value_heads", "must divide num_attention_heads");
  }
  ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(c.max_position_embeddings, r.PositiveInt("max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c.rms_norm_eps, r.PositiveFloat("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c.rope_theta, r.PositiveFloat("rope_theta", 10000.0));
  ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(j, source));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(bool attention_bias, r.Bool("attention_bias", false));
  c.qkv_bias = attention_bias || c.architecture == Architecture::kQwen2;
  if (auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer()) {
    c.bos_token_id = it->get<int32_t>();
  }
  ASSIGN_OR_RETURN(c.eos_token_ids, ParseEos(j, source));
  for (int32_t id : c.eos_token_ids) {
    if (id >= c.vocab_size) return r.Error("eos_token_id", "is past vocab_size");
  }
  if (c.bos_token_id >= c.vocab_size) return r.Error("bos_token_id", "is past vocab_size");
  if (auto it = j.find("torch_dtype"); it != j.end() && it->is_string()) {
    auto dt = ParseDType(it->get<std::string>());
    if (!dt.has_value() || *dt == DType::kI32 || IsQuantized(*dt)) {
      return r.Error("torch_dtype", absl::StrCat("is unsupported: ", it->get<std::string>()));
    }
    c.dtype = *dt;
  }
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && *it != "silu") {
    return r.Error("hidden_act",
                   absl::StrCat("'", it->get<std::string>(), "' is unsupported (silu)"));
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return FromJson(text, path);
}

std::string ModelConfig::ToJson() const {
  json j;
  j["architectures"] = {std::string(ArchitectureName(architecture))};
  j["model_type"] = model_type.empty()
                        ? (architecture == Architecture::kQwen2        ? "qwen2"
                           : architecture == Architecture::kMistral    ? "mistral"
                           : architecture == Architecture::kDeepseekV2 ? "deepseek_v2"
                           : architecture == Architecture::kDeepseekV3 ? "deepseek_v3"
                                                                       : "llama")
                        : model_type;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == RopeScaling::Type::kNone) {
    j["rope_scaling"] = nullptr;
  } else if (rope_scaling.type == RopeScaling::Type::kLinear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
  } else if (rope_scaling.type == RopeScaling::Type::kYarn) {
    j["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", rope_scaling.factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
        {"beta_fast", rope_scaling.beta_fast},
        {"beta_slow", rope_scaling.beta_slow},
        {"mscale", rope_scaling.mscale},
        {"mscale_all_dim", rope_scaling.mscale_all_dim}};
  } else {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", rope_scaling.factor},
        {"low_freq_factor", rope_scaling.low_freq_factor},
        {"high_freq_factor", rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (architecture != Architecture::kQwen2) j["attention_bias"] = qkv_bias;
  if (is_deepseek()) {
    const DeepseekConfig& d = deepseek;
    j.erase("head_dim");
    j["q_lora_rank"] = d.q_lora_rank > 0 ? json(d.q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = d.kv_lora_rank;
    j["qk_nope_head_dim"] = d.qk_nope_head_dim;
    j["qk_rope_head_dim"] = d.qk_rope_head_dim;
    j["v_head_dim"] = d.v_head_dim;
    j["n_routed_experts"] = d.n_routed_experts > 0 ? json(d.n_routed_experts) : json(nullptr);
    j["n_shared_experts"] = d.n_shared_experts;
    j["first_k_dense_replace"] = d.first_k_dense_replace;
    j["moe_layer_freq"] = d.moe_layer_freq;
    j["routed_scaling_factor"] = d.routed_scaling_factor;
    j["norm_topk_prob"] = d.norm_topk_prob;
    j["num_nextn_predict_layers"] = d.num_nextn_predict_layers;
    if (d.n_routed_experts > 0) {
      j["num_experts_per_tok"] = d.num_experts_per_tok;
      j["moe_intermediate_size"] = d.moe_intermediate_size;
      j["scoring_func"] = d.scoring == DeepseekConfig::Scoring::kSigmoid ? "sigmoid" : "softmax";
      j["topk_method"] = d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc ? "noaux_tc"
                         : d.topk_method == DeepseekConfig::TopkMethod::kGroupLimitedGreedy
                             ? "group_limited_greedy"
                             : "greedy";
      j["n_group"] = d.n_group;
      j["topk_group"] = d.topk_group;
    }
  }
  j["hidden_act"] = "silu";
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  }
  j["torch_dtype"] = dtype == DType::kF32   ? "float32"
                     : dtype == DType::kF16 ? "float16"
                                            : "bfloat16";
  return j.dump(2);
}

int64_t LayerParameterCount(const ModelConfig& c, int64_t layer) {
  const int64_t H = c.hidden_size;
  auto mlp = [H](int64_t intermediate) { return 3 * H * intermediate; };
  const int64_t norms = 2 * H;  // input_layernorm, post_attention_layernorm
  if (!c.is_deepseek()) {
    const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
    const int64_t attention = H * (q + 2 * kv) + q * H + (c.qkv_bias ? q + 2 * kv : 0);
    return norms + attention + mlp(c.intermediate_size);
  }
  const DeepseekConfig& d = c.deepseek;
  const int64_t heads = c.num_heads;
  const int64_t q_head = d.qk_nope_head_dim + d.qk_rope_head_dim;
  int64_t attention = d.q_lora_rank > 0
                          ? d.q_lora_rank * H + d.q_lora_rank + heads * q_head * d.q_lora_rank
                          : heads * q_head * H;
  attention += (d.kv_lora_rank + d.qk_rope_head_dim) * H + d.kv_lora_rank +
               heads * (d.qk_nope_head_dim + d.v_head_dim) * d.kv_lora_rank +
               H * heads * d.v_head_dim;
  if (!d.IsMoeLayer(layer)) return norms + attention + mlp(c.intermediate_size);
  int64_t moe = d.n_routed_experts * H;  // the router gate
  if (d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc) moe += d.n_routed_experts;
  moe += d.n_routed_experts * mlp(d.moe_intermediate_size);
  moe += mlp(d.moe_intermediate_size * d.n_shared_experts);
  return norms + attention + moe;
}

int64_t EmbeddingParameterCount(const ModelConfig& c) { return c.vocab_size * c.hidden_size; }

int64_t HeadParameterCount(const ModelConfig& c) {
  return c.hidden_size + c.vocab_size * c.hidden_size;
}

int64_t KvCacheValuesPerToken(const ModelConfig& c) {
  if (c.is_deepseek()) return c.deepseek.kv_lora_rank + c.deepseek.qk_rope_head_dim;
  return 2 * c.num_kv_heads * c.head_dim;
}

std::vector<float> ModelConfig::RopeInvFreq(int64_t rotary_dim) const {
  const int64_t half = rotary_dim / 2;
  std::vector<float> inv(half);
  // YaRN (DeepSeek's yarn_find_correction_range / yarn_linear_ramp_mask): dimensions that turn
  // fewer than beta_slow times over the original context are interpolated, more than beta_fast
  // times kept, linear in between.
  double ramp_low = 0, ramp_high = 0;
  if (rope_scaling.type == RopeScaling::Type::kYarn) {
    const double old_ctx = static_cast<double>(rope_scaling.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return rotary_dim * std::log(old_ctx / (rotations * 2 * std::numbers::pi)) /
             (2 * std::log(rope_theta));
    };
    ramp_low = std::max(std::floor(correction_dim(rope_scaling.beta_fast)), 0.0);
    ramp_high = std::min(std::ceil(correction_dim(rope_scaling.beta_slow)),
                         static_cast<double>(rotary_dim - 1));
    if (ramp_low == ramp_high) ramp_high += 0.001;
  }
  for (int64_t i = 0; i < half; ++i) {
    double f =
        1.0 / std::pow(rope_theta, static_cast<double>(2 * i) / static_cast<double>(rotary_dim));
    switch (rope_scaling.type) {
      case RopeScaling::Type::kNone:
        break;
      case RopeScaling::Type::kLinear:
        f /= rope_scaling.factor;
        break;
      case RopeScaling::Type::kLlama3: {
        // transformers' _compute_llama3_parameters.
        const double old_ctx = static_cast<double>(rope_scaling.original_max_position_embeddings);
        const double low_wavelen = old_ctx / rope_scaling.low_freq_factor;
        const double high_wavelen = old_ctx / rope_scaling.high_freq_factor;
        const double wavelen = 2 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f /= rope_scaling.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_ctx / wavelen - rope_scaling.low_freq_factor) /
                                (rope_scaling.high_freq_factor - rope_scaling.low_freq_factor);
          f = (1 - smooth) * f / rope_scaling.factor + smooth * f;
        }
        break;
      }
      case RopeScaling::Type::kYarn: {
        const double ramp =
            std::clamp((static_cast<double>(i) - ramp_low) / (ramp_high - ramp_low), 0.0, 1.0);
        const double extrapolate = 1.0 - ramp;  // weight of the unscaled frequency
        f = f / rope_scaling.factor * (1.0 - extrapolate) + f * extrapolate;
        break;
      }
    }
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace shardserve
