// Model configuration: the parts of a Hugging Face config.json that the engine needs.
//
// FromJson validates every field it reads (types, ranges, divisibility, NaN) and names the field
// and file in its errors. The config is a plain value; copy it freely.
#ifndef SHARDSERVE_MODEL_CONFIG_H_
#define SHARDSERVE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace shardserve {

enum class Architecture { kLlama, kMistral, kQwen2 };

absl::string_view ArchitectureName(Architecture a);

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // as written in config.json
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama when attention_bias is true
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;
  DType dtype = DType::kF32;  // torch_dtype: what the weights are stored as
  // GGUF files mix tensor types (e.g. Q4_K with Q6_K); safetensors models must match `dtype`.
  bool mixed_dtypes = false;

  // `source` names the file in error messages.
  static absl::StatusOr<ModelConfig> FromJson(absl::string_view json_text,
                                              absl::string_view source = "config.json");
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  // A config.json text that FromJson reads back to an equal config.
  std::string ToJson() const;

  // Inverse frequencies for RoPE, with rope_scaling applied: head_dim / 2 values.
  std::vector<float> RopeInvFreq() const;
};

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_CONFIG_H_
