// DeepSeek-V2/V3 as a pipeline stage: multi-head latent attention (MLA) over a compressed,
// paged KV cache, and DeepSeekMoE (dense first layers, then routed plus shared experts).
//
// Attention. Queries come from a low-rank projection (q_a_proj, q_a_layernorm, q_b_proj) or, when
// q_lora_rank is 0 (V2-Lite), from q_proj. Keys and values come from one latent vector per token,
// the kv_lora_rank values of kv_a_proj_with_mqa after kv_a_layernorm, plus a rotary key of
// qk_rope_head_dim values shared by all heads. The cache holds exactly those
// kv_lora_rank + qk_rope_head_dim values per token per layer, in paged blocks under the step's
// block tables (same block ids as every other stage). Attention runs in the absorbed form:
// each head's q_nope is mapped into the latent space through kv_b_proj's key half, scores are
// taken against the cached latents directly, and the value half of kv_b_proj is applied after
// the weighted sum, so keys and values are never expanded per head.
//
// RoPE follows the Hugging Face DeepSeek code: the rotary dimensions are stored interleaved
// and rotated pairwise; at load the q and kv_a rows are reordered so the backend's rotate_half
// Rope op computes the same thing. YaRN frequencies come from ModelConfig::RopeInvFreq; YaRN's
// cos/sin mscale is folded into the query's rotary rows and its mscale_all_dim into the softmax
// scale.
//
// Routing: V2's softmax gate (greedy or group-limited), V3's sigmoid gate with
// e_score_correction_bias and group-limited top-k (noaux_tc), norm_topk_prob and
// routed_scaling_factor with each version's rule. Experts run batched: the step's tokens are
// grouped by expert and each expert multiplies its rows at once.
//
// Multi-token-prediction modules (model.layers.<num_hidden_layers + i>.*) are recognised and
// left out of the main path: MtpTensorNames() lists them for a later speculative decoder.
//
// Backend use: projections, norms, RoPE, SwiGLU and residual adds are Backend ops. Two steps run
// on the host, behind the functions below, with data moved only through Backend copies:
// MlaAttentionHost (the paged latent attention; its cache lives in host memory) and the weighted
// combination of expert outputs. A device backend replaces them with ops of its own later.
//
// Threading: as for every ModelStage, Forward() calls must not overlap.
#ifndef SHARDSERVE_MODEL_DEEPSEEK_H_
#define SHARDSERVE_MODEL_DEEPSEEK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/stage.h"
#include "model/weights.h"

namespace shardserve {

// Values one token occupies in one layer's MLA cache: kv_lora_rank + qk_rope_head_dim
// (KvCacheValuesPerToken of a DeepSeek config).
inline int64_t MlaCacheValuesPerToken(const ModelConfig& c) { return KvCacheValuesPerToken(c); }

// YaRN's attention-temperature factor (yarn_get_mscale): 1 when scale <= 1.
double YarnMscale(double scale, double mscale);

// The routed experts of each token: experts[t * k + j] with weight weights[t * k + j].
struct ExpertRouting {
  int64_t top_k = 0;
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

// Routing for `tokens` rows of router logits [tokens, n_routed_experts]. `score_bias` is
// e_score_correction_bias (noaux_tc only; empty otherwise). Groups left out by group-limited
// routing are excluded outright (DeepSeek's inference code), and ties go to the lower index.
ExpertRouting RouteTokens(const ModelConfig& config, const float* logits, int64_t tokens,
                          absl::Span<const float> score_bias);

struct MlaAttentionShape {
  int64_t num_heads = 0;
  int64_t kv_lora_rank = 0;
  int64_t rope_dim = 0;
  int64_t block_size = 16;
  int64_t num_blocks = 0;
  float scale = 1.0f;  // softmax scale
};

// Host kernel of MLA attention. For each sequence, writes the new rows' latents (`latent`:
// [n, kv_lora_rank + rope_dim] rows `latent_stride` apart, the rotary key already rotated) into
// `cache` ([num_blocks * block_size, kv_lora_rank + rope_dim]), then for every new row and head
// computes causal attention with scores scale * (q_lat . c + q_pe . k_pe) over the sequence's
// cached positions and writes the weighted sum of latents c into out [n, heads * kv_lora_rank].
// q_lat: [n, heads * kv_lora_rank]; q_pe: [n, heads * rope_dim] rows `q_pe_stride` apart.
// Sequences and block tables must have been validated by the caller.
void MlaAttentionHost(const float* q_lat, const float* q_pe, int64_t q_pe_stride,
                      const float* latent, int64_t latent_stride,
                      absl::Span<const AttentionSeq> seqs, const MlaAttentionShape& shape,
                      float* cache, float* out, ThreadPool* pool);

// Names of the multi-token-prediction tensors present in `weights`.
std::vector<std::string> MtpTensorNames(const ModelConfig& config, const WeightSource& weights);

// Takes ownership of `weights`; reads only the tensors of the stage's layers (and the embedding
// on the first stage, the final norm and head on the last). Errors name the tensor and the
// expected shape or dtype.
absl::StatusOr<std::unique_ptr<ModelStage>> LoadDeepseekStage(const ModelConfig& config,
                                                              std::unique_ptr<WeightSource> weights,
                                                              const StageSpec& spec,
                                                              const KvCacheSpec& kv,
                                                              Backend* backend);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_DEEPSEEK_H_
