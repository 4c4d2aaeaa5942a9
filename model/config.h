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

enum class Architecture { kLlama, kMistral, kQwen2, kDeepseekV2, kDeepseekV3 };

absl::string_view ArchitectureName(Architecture a);

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3, kYarn };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3, yarn
  double beta_fast = 32.0;                          // yarn
  double beta_slow = 1.0;                           // yarn
  double mscale = 1.0;                              // yarn
  double mscale_all_dim = 0.0;                      // yarn
};

// DeepSeek-V2/V3: multi-head latent attention (MLA) and DeepSeekMoE, as in the Hugging Face
// configs of model_type deepseek_v2 / deepseek_v3. Unused (zero) for other architectures.
struct DeepseekConfig {
  enum class Scoring { kSoftmax, kSigmoid };
  // greedy: top-k over all experts (V2-Lite); group_limited_greedy: groups ranked by their best
  // expert (V2); noaux_tc: groups ranked by their two best biased scores (V3).
  enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoAuxTc };
  int64_t q_lora_rank = 0;  // 0: a full-rank q_proj (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t n_routed_experts = 0;  // 0: every layer dense
  int64_t num_experts_per_tok = 0;
  int64_t n_shared_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  Scoring scoring = Scoring::kSoftmax;
  TopkMethod topk_method = TopkMethod::kGreedy;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  // Multi-token-prediction modules stored after the main layers (model.layers.<num_layers + i>).
  int64_t num_nextn_predict_layers = 0;

  bool IsMoeLayer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
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
  DeepseekConfig deepseek;  // architectures kDeepseekV2 / kDeepseekV3 only

  bool is_deepseek() const {
    return architecture == Architecture::kDeepseekV2 || architecture == Architecture::kDeepseekV3;
  }

  // `source` names the file in error messages.
  static absl::StatusOr<ModelConfig> FromJson(absl::string_view json_text,
                                              absl::string_view source = "config.json");
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  // A config.json text that FromJson reads back to an equal config.
  std::string ToJson() const;

  // Inverse frequencies for RoPE, with rope_scaling applied: head_dim / 2 values.
  std::vector<float> RopeInvFreq() const { return RopeInvFreq(head_dim); }
  // The same for a rotary part of `rotary_dim` values (DeepSeek's qk_rope_head_dim).
  std::vector<float> RopeInvFreq(int64_t rotary_dim) const;
};

// Sizes of the stored weights, in parameters, as the Hugging Face checkpoints lay them out; the
// placement balances stages by them and tests check them against synthesized models' tensors.
//
// One decoder layer, 0 <= layer < num_layers: norms, attention (Llama/Qwen2: q, k, v, o and the
// q/k/v biases when qkv_bias; DeepSeek: MLA's q (low-rank or full), kv_a_proj_with_mqa, the two
// latent norms, kv_b and o) and the MLP (dense: gate, up, down of intermediate_size; DeepSeek MoE
// layers: the router gate, its e_score_correction_bias under noaux_tc, n_routed_experts experts
// and the shared experts, all of moe_intermediate_size). Multi-token-prediction modules stored
// after the main layers are not counted: no stage loads them.
int64_t LayerParameterCount(const ModelConfig& config, int64_t layer);
// The token embedding (first stage): vocab_size x hidden_size.
int64_t EmbeddingParameterCount(const ModelConfig& config);
// The final norm and the LM head (last stage). With tied embeddings the last stage still holds
// the vocab_size x hidden_size matrix, so it is counted here too.
int64_t HeadParameterCount(const ModelConfig& config);

// Values one token occupies in one layer's KV cache: keys and values of every KV head
// (2 x num_kv_heads x head_dim), or for DeepSeek's MLA the compressed latent plus the shared
// rotary key (kv_lora_rank + qk_rope_head_dim). Stages store them as F32.
int64_t KvCacheValuesPerToken(const ModelConfig& config);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_CONFIG_H_
