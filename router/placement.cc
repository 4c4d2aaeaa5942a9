#include "router/placement.h"

#include <algorithm>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

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

absl::StatusOr<std::vector<LayerRange>> BalancedPlacement(const ModelConfig& config, int num_stages,
                                                          const std::vector<double>& speeds) {
  const int64_t n = config.num_layers;
  if (num_stages < 1 || num_stages > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("--stages: ", num_stages, " stages for ", n, " layers"));
  }
  if (!speeds.empty() && static_cast<int>(speeds.size()) != num_stages) {
    return absl::InvalidArgumentError("one speed per stage");
  }
  const double h = config.hidden_size;
  const double q = config.num_heads * config.head_dim;
  const double kv = config.num_kv_heads * config.head_dim;
  const double layer = h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size;
  const double head = h * config.vocab_size + h;
  const double embed = h;
  auto speed = [&](int s) { return speeds.empty() ? 1.0 : std::max(speeds[s], 1e-9); };
  auto cost = [&](int s, int64_t b, int64_t e) {
    double c = (e - b) * layer;
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

std::string FormatLayerRanges(const std::vector<LayerRange>& ranges) {
  return absl::StrJoin(ranges, ",", [](std::string* out, const LayerRange& r) {
    absl::StrAppend(out, r.begin, "-", r.end - 1);
  });
}

}  // namespace shardserve
