// Placement: which contiguous layer range each pipeline stage holds, and how much KV cache a
// pipeline gets by default.
//
// BalancedPlacement splits the layers so that the heaviest stage is as light as possible. By
// default parts weigh their bytes; with CostWeights they weigh the cost model's predicted step
// time (model/cost_model.h), which counts what bytes do not: the embedding is a row lookup, the
// LM head's sampling costs per vocabulary entry. Layers are weighed one by one with
// LayerParameterCount (model/config.h), so they may differ: DeepSeek's first_k_dense_replace dense
// layers are several times lighter than its MoE layers, which carry every routed and shared expert.
// The first stage also holds the token embedding and the last the final norm and LM head (vocab x
// hidden; with tied embeddings the last stage still holds its own copy), which on small models is
// worth several layers. Stages may carry a relative speed (Describe's estimate); a faster worker
// gets proportionally more. ParseLayerRanges reads a manual split such as "0-2,3-4" (inclusive
// ends) and checks that it covers every layer once, in order.
#ifndef SHARDSERVE_ROUTER_PLACEMENT_H_
#define SHARDSERVE_ROUTER_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/cost_model.h"

namespace shardserve {

struct LayerRange {
  int64_t begin = 0;  // inclusive
  int64_t end = 0;    // exclusive
  bool operator==(const LayerRange&) const = default;
};

// INVALID_ARGUMENT naming `--layers` when malformed, overlapping, out of order or incomplete.
absl::StatusOr<std::vector<LayerRange>> ParseLayerRanges(const std::string& spec,
                                                         int64_t num_layers);

// What each part of the model weighs in placement: every layer, the embedding (first stage)
// and the final norm with the LM head and sampling (last stage).
struct PlacementWeights {
  std::vector<double> layers;
  double embedding = 0;
  double head = 0;
};

// Weights by bytes of parameters (LayerParameterCount and friends).
PlacementWeights ByteWeights(const ModelConfig& config);
// Weights by the cost model's predicted time on `profile` for a decode step of `batch_seqs`
// sequences at `context` positions: layers by their roofline time, the embedding by its row
// reads, the head by its matrix and the sampling of each sequence.
PlacementWeights CostWeights(const ModelConfig& config, const DeviceProfile& profile,
                             int64_t batch_seqs, int64_t context);

// `speeds` (optional, one per stage, > 0) scales each stage's capacity; `weights` (optional)
// replaces ByteWeights. INVALID_ARGUMENT when num_stages is not in [1, num_layers].
absl::StatusOr<std::vector<LayerRange>> BalancedPlacement(
    const ModelConfig& config, int num_stages, const std::vector<double>& speeds = {},
    const PlacementWeights* weights = nullptr);

// Weight bytes a stage holding `range` loads: its layers, plus the embedding on the first stage
// and the final norm and head on the last (parameters x the config's bytes per element).
int64_t StageWeightBytes(const ModelConfig& config, const LayerRange& range);

// The default KV cache per pipeline, in blocks of `kv_block_size` tokens: room for `max_seqs`
// full contexts, capped so that the stage with the most layers keeps at most
// kMaxDefaultKvBytesPerStage of KV (KvCacheValuesPerToken F32 values per token per layer), but
// never less than one full context.
inline constexpr int64_t kMaxDefaultKvBytesPerStage = int64_t{1} << 30;
int64_t DefaultKvBlocks(const ModelConfig& config, const std::vector<LayerRange>& ranges,
                        int64_t kv_block_size, int64_t max_seqs);

// A pipeline worker's device, from its Describe, for KV sizing.
struct KvDevice {
  int stage = 0;            // index into the layer ranges
  std::string worker;       // its address, for errors
  std::string name;         // the device's name, for errors
  bool gpu = false;         // a GPU (the pool fills it) or a simulated device (it caps the pool)
  std::string gpu_id;       // host and GPU UUID: workers on one GPU share its memory
  double free_bytes = 0;    // what the worker may still allocate
  DeviceProfile precision;  // weight_bytes_per_param and kv_bytes_per_value
};

struct KvSizing {
  int64_t block_size = 16;
  int64_t blocks_per_context = 0;  // the fewest blocks a device must hold
  int64_t max_step_tokens = 0;     // for a GPU stage's workspace
  int64_t max_seqs = 0;
};

// KV blocks per pipeline with --kv-blocks 0, given the default (`default_blocks`): the smallest
// number of blocks every device holds after its stage's weights (and, on a GPU, its step
// workspace, StageWorkspaceBytes). GPUs fill their memory (as vLLM's gpu_memory_utilization);
// simulated devices only cap the default; with neither the default stands. Workers on one GPU
// split its free memory evenly. INVALID_ARGUMENT naming the layers, the worker, the GiB free and
// what to change when a device cannot hold one full context.
absl::StatusOr<int64_t> KvBlocksForDevices(const ModelConfig& config,
                                           const std::vector<LayerRange>& ranges,
                                           const std::vector<KvDevice>& devices,
                                           int64_t default_blocks, const KvSizing& sizing);

// "0-2,3-4": the inverse of ParseLayerRanges.
std::string FormatLayerRanges(const std::vector<LayerRange>& ranges);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_PLACEMENT_H_
