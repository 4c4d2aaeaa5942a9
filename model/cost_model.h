// The step-time cost model: what one pipeline stage's step costs on a device, from the model's
// shape alone. Simulated workers (--backend sim) wait as long as it says; placement balances
// stages by it; `shardserve predict` prints it with the pipeline's analytic throughput bound.
//
// A step's time is a roofline plus fixed costs:
//
//   max(m, c) + serial fraction x min(m, c) + step overhead
//     + token overhead x tokens x layers + pair overhead x attention pairs x layers
//     + logits x vocabulary x per-logit sampling cost
//
// where m = weight bytes / memory bandwidth + K/V bytes / K/V bandwidth and c = FLOPs / peak. An
// accelerator overlaps memory and math (serial fraction 0: the plain roofline); a CPU core running
// one matrix at a time mostly does not (fitted, near 1).
//
// Bytes read are the stage's weights that the step touches (every dense matrix; of a DeepSeek
// MoE layer only the experts the step's tokens are expected to pick, plus the shared experts and
// the router), the K/V each sequence reads for its context, and the embedding rows of its tokens.
// FLOPs are 2 per weight per token for the matrices a token goes through (its top-k experts on
// MoE layers), the attention scores and weighted sums over each token's context, and the LM head
// for each row that asks for logits. An activation hop between stages takes
// tokens x hidden x activation bytes over the link bandwidth, plus the link latency.
//
// Profiles are built in (h200, h100, a100-80g, l40s; cpu-here, fitted to this project's CPU
// kernels) or read from a JSON file (ProfileFromJson documents its fields).
#ifndef SHARDSERVE_MODEL_COST_MODEL_H_
#define SHARDSERVE_MODEL_COST_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/config.h"

namespace shardserve {

class ModelStage;

struct DeviceProfile {
  std::string name;
  double memory_bytes = 0;
  double memory_bandwidth = 0;        // bytes/s
  double kv_bandwidth = 0;            // bytes/s of K/V reads (paged, gathered); 0: memory_bandwidth
  double flops = 0;                   // dense FLOP/s at the weights' precision
  double step_overhead_s = 0;         // fixed cost of one stage step (launches, scheduling)
  double token_overhead_s = 0;        // per token per layer (norms, RoPE, copies)
  double pair_overhead_s = 0;         // per (query token, key position) pair per layer
  double sample_s_per_logit = 0;      // last stage: sampling cost per vocabulary entry
  double serial_fraction = 0;         // share of min(memory, math) time not overlapped, 0..1
  double link_bandwidth = 0;          // bytes/s of one hop to the next stage
  double link_latency_s = 0;          // per hop
  double weight_bytes_per_param = 2;  // BF16
  double kv_bytes_per_value = 2;
  double activation_bytes_per_value = 2;
};

// h200, h100, a100-80g, l40s, cpu-here.
std::vector<std::string> BuiltinProfileNames();
// INVALID_ARGUMENT naming --sim-device and the known names for another name.
absl::StatusOr<DeviceProfile> BuiltinProfile(absl::string_view name);
// A JSON object: "name" (string), "memory_gib", "memory_bandwidth_gbps" (GB/s),
// "kv_bandwidth_gbps", "tflops",
// "step_overhead_us", "token_overhead_us", "pair_overhead_ns", "sample_ns_per_logit",
// "link_bandwidth_gbps", "link_latency_us", "serial_fraction", "weight_bytes_per_param",
// "kv_bytes_per_value", "activation_bytes_per_value". Fields left out keep `base`'s values; "base"
// (a built-in name) picks another base than h200. Unknown fields, non-numbers and values outside
// their range are INVALID_ARGUMENT naming `source` and the field.
absl::StatusOr<DeviceProfile> ProfileFromJson(absl::string_view json_text,
                                              absl::string_view source);
absl::StatusOr<DeviceProfile> ProfileFromFile(const std::string& path);
// The JSON form of `p` (ProfileFromJson reads it back).
std::string ProfileToJson(const DeviceProfile& p);

// One sequence's part of a step, as the cost model sees it.
struct SeqLoad {
  int64_t tokens = 1;   // new tokens this step
  int64_t context = 1;  // positions after the step (start_pos + tokens)
  bool logits = false;  // last stage: computes logits and samples
};

struct StepCost {
  double weight_bytes = 0;
  double kv_bytes = 0;
  double flops = 0;
  double seconds = 0;
};

// The cost of one step of the stage holding layers [begin, end) (embedding when begin == 0, the
// final norm and LM head when end == num_layers) for `batch`.
StepCost StageStepCost(const ModelConfig& config, int64_t begin, int64_t end,
                       absl::Span<const SeqLoad> batch, const DeviceProfile& profile);

// One activation hop carrying `tokens` rows of hidden states.
double HopSeconds(const ModelConfig& config, int64_t tokens, const DeviceProfile& profile);

// Bytes of weights the stage holds at the profile's precision (every expert).
double StageWeightBytesAt(const ModelConfig& config, int64_t begin, int64_t end,
                          const DeviceProfile& profile);

// Bytes of KV cache per token of the stage's layers at the profile's precision.
double StageKvBytesPerToken(const ModelConfig& config, int64_t begin, int64_t end,
                            const DeviceProfile& profile);

// Device memory a stage needs beside its weights and KV pages for steps of up to
// `max_step_tokens` tokens, sampling up to `max_sampled_rows` of them on the last stage (logits):
// the F32 activation buffers of every op, plus a fixed allowance for library workspaces and
// plans. What KV sizing leaves free on a GPU.
double StageWorkspaceBytes(const ModelConfig& config, bool last_stage, int64_t max_step_tokens,
                           int64_t max_sampled_rows);

// KV blocks of `block_size` tokens that fit in `free_bytes` after the stage's weights and
// `reserve_bytes`, at the profile's weight and KV precision; 0 when nothing is left.
int64_t KvBlocksThatFit(const ModelConfig& config, int64_t begin, int64_t end, double free_bytes,
                        double reserve_bytes, int64_t block_size, const DeviceProfile& precision);

// The cpu-here profile scaled to the core `stage` runs on: the loaded stage runs a one-token
// decode step at a 256-token context and a 64-token prefill chunk (fewer where its KV pool or
// context is smaller), alternated, a warm-up round and then 3 to 7 timed
// rounds (stopping once 1 s is spent), and every time parameter is scaled by the geometric mean
// of the two medians' ratios of measured to predicted. The median, not the fastest: on a shared
// host the fastest of a few runs is faster than the steady state. What a CPU worker reports in
// Describe after loading a shard, and what placement uses.
DeviceProfile CalibrateCpuProfile(ModelStage& stage);

// Expected distinct experts `tokens` tokens pick when each picks `per_token` of `experts`
// uniformly: experts x (1 - (1 - per_token / experts)^tokens).
double ExpectedDistinctExperts(int64_t experts, int64_t per_token, int64_t tokens);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_COST_MODEL_H_
