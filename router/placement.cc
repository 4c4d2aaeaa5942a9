#include "router/placement.h"

#include <algorithm>
#include <limits>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/layers.h"
#include "common/wire.h"

namespace shardserve {

absl::StatusOr<std::vector<LayerRange>> ParseLayerRanges(const std::string& spec,
                                                         int64_t num_layers) {
  std::vector<LayerRange> ranges;
  int64_t next = 0;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    std::vector<absl::string_view> ends = absl::StrSplit(part, '-');
    int64_t first = 0, last = 0;
    if (ends.size() != 2 || !absl::SimpleAtoi(ends[0], &first) ||
        !absl::SimpleAtoi(ends[1], &last)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--layers: '", part, "' is not FIRST-LAST (e.g. 0-2,3-4)"));
    }
    if (first != next || last < first || last >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--layers: range '", part, "' must start at layer ", next, " and end before layer ",
          num_layers, " (ranges are inclusive, in order, without gaps)"));
    }
    ranges.push_back({first, last + 1});
    next = last + 1;
  }
  if (next != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layers: covers layers 0-", next - 1, " but the model has ", num_layers));
  }
  return ranges;
}

namespace {

int64_t BytesPerParameter(const ModelConfig& config) {
  // Quantized GGUF types have no whole-byte size; every layer shares it, so any constant keeps
  // the balance.
  return std::max<int64_t>(1, static_cast<int64_t>(DTypeSize(config.dtype)));
}

}  // namespace

int64_t StageWeightBytes(const ModelConfig& config, const LayerRange& range) {
  int64_t params = 0;
  for (int64_t l = range.begin; l < range.end; ++l) params += LayerParameterCount(config, l);
  if (range.begin == 0) params += EmbeddingParameterCount(config);
  if (range.end == config.num_layers) params += HeadParameterCount(config);
  return params * BytesPerParameter(config);
}

PlacementWeights ByteWeights(const ModelConfig& config) {
  PlacementWeights w;
  const double element = static_cast<double>(BytesPerParameter(config));
  for (int64_t l = 0; l < config.num_layers; ++l) {
    w.layers.push_back(element * static_cast<double>(LayerParameterCount(config, l)));
  }
  w.embedding = element * static_cast<double>(EmbeddingParameterCount(config));
  w.head = element * static_cast<double>(HeadParameterCount(config));
  return w;
}

PlacementWeights CostWeights(const ModelConfig& config, const DeviceProfile& profile,
                             int64_t batch_seqs, int64_t context) {
  std::vector<SeqLoad> batch(std::max<int64_t>(1, batch_seqs), SeqLoad{1, context, true});
  const int64_t n = config.num_layers;
  // A part's time without the step's fixed overhead, which every stage pays once.
  auto part = [&](int64_t b, int64_t e) {
    return StageStepCost(config, b, e, batch, profile).seconds - profile.step_overhead_s;
  };
  PlacementWeights w;
  for (int64_t l = 0; l < n; ++l) {
    // A middle layer alone: no embedding, no head.
    w.layers.push_back(l == 0 || l == n - 1 ? 0.0 : part(l, l + 1));
  }
  // First and last layers: their stage's time minus the embedding or the head alone.
  w.embedding = part(0, 0);
  w.head = part(n, n);
  if (n >= 1) w.layers[0] = part(0, 1) - w.embedding;
  if (n >= 2) w.layers[n - 1] = part(n - 1, n) - w.head;
  return w;
}

absl::StatusOr<std::vector<LayerRange>> BalancedPlacement(const ModelConfig& config, int num_stages,
                                                          const std::vector<double>& speeds,
                                                          const PlacementWeights* weights) {
  const int64_t n = config.num_layers;
  if (num_stages < 1 || num_stages > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("--stages: ", num_stages, " stages for ", n, " layers"));
  }
  if (!speeds.empty() && static_cast<int>(speeds.size()) != num_stages) {
    return absl::InvalidArgumentError("one speed per stage");
  }
  const PlacementWeights by_bytes = weights == nullptr ? ByteWeights(config) : PlacementWeights();
  const PlacementWeights& w = weights == nullptr ? by_bytes : *weights;
  if (static_cast<int64_t>(w.layers.size()) != n) {
    return absl::InvalidArgumentError("placement weights: one per layer");
  }
  // before[l]: weight of layers [0, l).
  std::vector<double> before(n + 1, 0.0);
  for (int64_t l = 0; l < n; ++l) before[l + 1] = before[l] + w.layers[l];
  const double embed = w.embedding;
  const double head = w.head;
  auto speed = [&](int s) { return speeds.empty() ? 1.0 : std::max(speeds[s], 1e-9); };
  auto cost = [&](int s, int64_t b, int64_t e) {
    double c = before[e] - before[b];
    if (b == 0) c += embed;
    if (e == n) c += head;
    return c / speed(s);
  };
  // best[s][e]: minimal max-cost of placing layers [0, e) on stages [0, s].
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(num_stages, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int64_t>> cut(num_stages, std::vector<int64_t>(n + 1, 0));
  for (int64_t e = 1; e <= n; ++e) best[0][e] = cost(0, 0, e);
  for (int s = 1; s < num_stages; ++s) {
    for (int64_t e = s + 1; e <= n; ++e) {
      for (int64_t b = s; b < e; ++b) {
        const double c = std::max(best[s - 1][b], cost(s, b, e));
        // Ties go to the later cut, which keeps layers off the last stage (it has the head).
        if (c <= best[s][e]) {
          best[s][e] = c;
          cut[s][e] = b;
        }
      }
    }
  }
  std::vector<LayerRange> ranges(num_stages);
  int64_t e = n;
  for (int s = num_stages - 1; s >= 0; --s) {
    const int64_t b = s == 0 ? 0 : cut[s][e];
    ranges[s] = {b, e};
    e = b;
  }
  return ranges;
}

int64_t DefaultKvBlocks(const ModelConfig& config, const std::vector<LayerRange>& ranges,
                        int64_t kv_block_size, int64_t max_seqs) {
  const int64_t blocks_per_context =
      (config.max_position_embeddings + kv_block_size - 1) / kv_block_size;
  int64_t widest = 0;
  for (const LayerRange& r : ranges) widest = std::max(widest, r.end - r.begin);
  const int64_t bytes_per_block =
      KvCacheValuesPerToken(config) * static_cast<int64_t>(sizeof(float)) * kv_block_size * widest;
  const int64_t cap = kMaxDefaultKvBytesPerStage / std::max<int64_t>(1, bytes_per_block);
  return std::max(blocks_per_context, std::min(max_seqs * blocks_per_context, cap));
}

absl::StatusOr<int64_t> KvBlocksForDevices(const ModelConfig& config,
                                           const std::vector<LayerRange>& ranges,
                                           const std::vector<KvDevice>& devices,
                                           int64_t default_blocks, const KvSizing& sizing) {
  std::map<std::string, int> per_gpu;
  for (const KvDevice& d : devices) {
    if (d.gpu) ++per_gpu[d.gpu_id];
  }
  int64_t fits_all = std::numeric_limits<int64_t>::max();
  bool gpu = false, sim = false;
  for (const KvDevice& d : devices) {
    const LayerRange& r = ranges[d.stage];
    const bool last = r.end == config.num_layers;
    const double reserve =
        d.gpu ? StageWorkspaceBytes(config, last, sizing.max_step_tokens, sizing.max_seqs) : 0;
    const double free = d.gpu ? d.free_bytes / per_gpu[d.gpu_id] : d.free_bytes;
    (d.gpu ? gpu : sim) = true;
    const int64_t fits =
        KvBlocksThatFit(config, r.begin, r.end, free, reserve, sizing.block_size, d.precision);
    if (fits < sizing.blocks_per_context) {
      const double weights = StageWeightBytesAt(config, r.begin, r.end, d.precision);
      return absl::InvalidArgumentError(absl::StrCat(
          "layers ", LayerRangeText(r.begin, r.end), " on ", d.worker, " (", d.name, ", ",
          absl::StrFormat("%.2f", free / (1 << 30)), " GiB free",
          d.gpu && per_gpu[d.gpu_id] > 1
              ? absl::StrCat(" as its share of a GPU ", per_gpu[d.gpu_id], " workers use")
              : "",
          ") leave room for ", fits, " KV blocks after ",
          absl::StrFormat("%.2f", weights / (1 << 30)), " GiB of weights",
          reserve > 0 ? absl::StrFormat(" and %.2f GiB of workspace", reserve / (1 << 30)) : "",
          "; one full context needs ", sizing.blocks_per_context, ": use more --stages",
          d.gpu ? ", a larger --gpu-memory-fraction" : "", " or a device with more memory"));
    }
    fits_all = std::min(fits_all, fits);
  }
  if (!gpu && !sim) return default_blocks;
  return std::min<int64_t>(kMaxKvBlocks,
                           gpu && !sim ? fits_all : std::min(default_blocks, fits_all));
}

std::string FormatLayerRanges(const std::vector<LayerRange>& ranges) {
  return absl::StrJoin(ranges, ",", [](std::string* out, const LayerRange& r) {
    absl::StrAppend(out, LayerRangeText(r.begin, r.end));
  });
}

}  // namespace shardserve
