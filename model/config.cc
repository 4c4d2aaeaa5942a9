#include "model/config.h"

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
  absl::string_view source_;
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
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": unsupported architecture '", arch_name.empty() ? *model_type : arch_name,
      "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"));
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
  } else {
    return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported rope_scaling type '",
                                                   type, "' (supported: linear, llama3)"));
  }
  ASSIGN_OR_RETURN(rs.factor, r.PositiveFloat("factor", -1.0));
  if (rs.factor < 0) return r.Error("factor", "is missing");
  return rs;
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
  if (c.hidden_size % c.num_heads != 0 && !j.contains("head_dim")) {
    return r.Error("num_attention_heads", "must divide hidden_size when head_dim is not given");
  }
  ASSIGN_OR_RETURN(c.head_dim, r.PositiveInt("head_dim", c.hidden_size / c.num_heads));
  if (c.head_dim % 2 != 0) return r.Error("head_dim", "must be even for rotary embeddings");
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
  j["model_type"] = model_type.empty() ? (architecture == Architecture::kQwen2     ? "qwen2"
                                          : architecture == Architecture::kMistral ? "mistral"
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

std::vector<float> ModelConfig::RopeInvFreq() const {
  const int64_t half = head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    double f =
        1.0 / std::pow(rope_theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
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
    }
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace shardserve
