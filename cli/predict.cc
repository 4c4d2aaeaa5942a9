#include "cli/predict.h"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/cli_flags.h"
#include "common/layers.h"
#include "model/config.h"
#include "model/cost_model.h"
#include "nlohmann/json.hpp"
#include "router/placement.h"

namespace shardserve {
namespace {

struct PredictConfig {
  std::string model, layers, device = "h200", profile;
  int stages = 1, concurrency = 64, prompt_tokens = 64, max_tokens = 256, max_seqs = 512;
  double link_latency_us = -1;
  bool json = false;
};

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 2;
}

}  // namespace

int PredictMain(int argc, char** argv) {
  CLI::App app{
      "Predicts a pipeline's step times and its analytic throughput bound from the cost model "
      "(the one --backend sim workers wait on): per stage, the decode step of one micro-batch "
      "and the prefill of its prompts; the bound is the bottleneck stage's time per micro-batch "
      "and the batch it carries.",
      "shardserve predict"};
  PredictConfig c;
  app.add_option("--model", c.model, "model folder (only config.json is read)")->required();
  app.add_option("--stages", c.stages, "stages per pipeline")->check(CLI::Range(1, 1024));
  app.add_option("--layers", c.layers, "manual split, inclusive ranges: 0-2,3-4");
  app.add_option("--device", c.device, "built-in device profile")->capture_default_str();
  app.add_option("--profile", c.profile, "JSON device profile instead of --device");
  app.add_option("--link-latency-us", c.link_latency_us,
                 "per-hop latency (default: the profile's)");
  app.add_option("--concurrency", c.concurrency, "streams in flight")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-seqs", c.max_seqs, "the router's --max-seqs")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--prompt-tokens", c.prompt_tokens, "prompt length")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-tokens", c.max_tokens, "tokens generated per request")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_flag("--json", c.json, "print one JSON object");
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  auto config = ModelConfig::FromFile(c.model + "/config.json");
  if (!config.ok()) return Fail(config.status());
  auto profile = c.profile.empty() ? BuiltinProfile(c.device) : ProfileFromFile(c.profile);
  if (!profile.ok()) return Fail(profile.status());
  if (c.link_latency_us >= 0) profile->link_latency_s = c.link_latency_us * 1e-6;
  // As the router runs it: at most --max-seqs sequences, in one micro-batch per stage.
  const int64_t running = std::min(c.concurrency, c.max_seqs);
  const int64_t in_flight = std::min<int64_t>(c.stages, running);
  const int64_t batch = (running + in_flight - 1) / in_flight;
  const int64_t context = c.prompt_tokens + c.max_tokens / 2;
  std::vector<LayerRange> ranges;
  if (!c.layers.empty()) {
    auto parsed = ParseLayerRanges(c.layers, config->num_layers);
    if (!parsed.ok()) return Fail(parsed.status());
    ranges = *parsed;
  } else {
    const PlacementWeights w = CostWeights(*config, *profile, batch, context);
    auto placed = BalancedPlacement(*config, c.stages, {}, &w);
    if (!placed.ok()) return Fail(placed.status());
    ranges = *placed;
  }
  nlohmann::json out;
  out["profile"] = profile->name;
  out["micro_batch"] = batch;
  out["micro_batches_in_flight"] = in_flight;
  double bottleneck_decode = 0, bottleneck_prefill = 0, round_trip = 0;
  for (const LayerRange& r : ranges) {
    std::vector<SeqLoad> decode(batch, SeqLoad{1, context, true});
    std::vector<SeqLoad> prefill(batch, SeqLoad{c.prompt_tokens, c.prompt_tokens, true});
    const StepCost d = StageStepCost(*config, r.begin, r.end, decode, *profile);
    const StepCost p = StageStepCost(*config, r.begin, r.end, prefill, *profile);
    bottleneck_decode = std::max(bottleneck_decode, d.seconds);
    bottleneck_prefill = std::max(bottleneck_prefill, p.seconds);
    const bool last = r.end == config->num_layers;
    const double hop = last ? 0.0 : HopSeconds(*config, batch, *profile);
    round_trip += d.seconds + hop;
    out["stages"].push_back(
        {{"layers", LayerRangeText(r.begin, r.end)},
         {"weights_gib", StageWeightBytesAt(*config, r.begin, r.end, *profile) / double(1 << 30)},
         {"decode_ms", d.seconds * 1e3},
         {"prefill_ms", p.seconds * 1e3},
         {"hop_ms", hop * 1e3}});
  }
  // One micro-batch leaves the pipeline per bottleneck step once every slot is full; a request
  // of max_tokens takes one prefill and max_tokens - 1 decode steps.
  const double per_request_s =
      bottleneck_prefill + (c.max_tokens - 1) * std::max(bottleneck_decode, round_trip / in_flight);
  const double bound = static_cast<double>(batch) * c.max_tokens / per_request_s;
  const double decode_bound = static_cast<double>(batch) / bottleneck_decode;
  out["bottleneck_decode_ms"] = bottleneck_decode * 1e3;
  out["round_trip_ms"] = round_trip * 1e3;
  out["decode_bound_tokens_per_s"] = decode_bound;
  out["bound_tokens_per_s"] = bound;
  if (c.json) {
    std::cout << out.dump() << std::endl;
    return 0;
  }
  std::printf("%s, micro-batch %lld x %lld in flight, context %lld\n", profile->name.c_str(),
              static_cast<long long>(batch), static_cast<long long>(in_flight),
              static_cast<long long>(context));
  std::printf(
      "| stage | layers | weights GiB | decode ms | prefill ms | hop ms |\n"
      "|---|---|---|---|---|---|\n");
  int i = 0;
  for (const auto& s : out["stages"]) {
    std::printf("| %d | %s | %.2f | %.3f | %.3f | %.3f |\n", i++,
                s["layers"].get<std::string>().c_str(), s["weights_gib"].get<double>(),
                s["decode_ms"].get<double>(), s["prefill_ms"].get<double>(),
                s["hop_ms"].get<double>());
  }
  std::printf("decode bound %.0f tokens/s; with prefill %.0f tokens/s\n", decode_bound, bound);
  return 0;
}

}  // namespace shardserve
