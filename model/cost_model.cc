#include "model/cost_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "model/stage.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using nlohmann::json;

DeviceProfile Gpu(std::string name, double mem_gib, double bw_gbps, double tflops, double link_gbps,
                  double link_latency_us) {
  DeviceProfile p;
  p.name = std::move(name);
  p.memory_bytes = mem_gib * double(1 << 30);
  p.memory_bandwidth = bw_gbps * 1e9;
  p.flops = tflops * 1e12;
  // A decode step of a CUDA-graph-captured stage: launches, the sampler's host round trip.
  p.step_overhead_s = 150e-6;
  p.token_overhead_s = 0;
  p.sample_s_per_logit = 0;
  p.link_bandwidth = link_gbps * 1e9;
  p.link_latency_s = link_latency_us * 1e-6;
  return p;
}

// Fitted by bench/stage_cost --fit (docs/SCALING.md) to this project's CPU stage with F32
// weights and one thread per worker, on three shapes at once (the synthetic llama-110m, and the
// same at twice and half its width: decode of 1 to 32 sequences, prefill chunks of 64 to 512,
// both halves of a 2-stage split of each) on an AMD EPYC (Zen 4) core; the mean of four fits in
// one session, whose weight bandwidth alone moved from 27.9 to 34.1 GB/s with the shared host's
// load. One shape cannot tell the FLOP rate from a per-token cost (both grow with the prompt);
// three widths can. A CPU core mostly runs memory and math one after the other (serial fraction
// 1); paged K/V reads are gathered 16 positions at a time and run at a third of the weights'
// streaming rate. Workers re-scale it to their own core with a short measurement at load
// (CalibrateCpuProfile).
DeviceProfile CpuHere() {
  DeviceProfile p;
  p.name = "cpu-here";
  p.memory_bytes = 16.0 * double(1 << 30);
  p.memory_bandwidth = 31.3e9;
  p.kv_bandwidth = 9.5e9;
  p.flops = 98.0e9;
  p.serial_fraction = 1;
  p.step_overhead_s = 0;
  p.token_overhead_s = 5.2e-6;
  p.pair_overhead_s = 0;
  p.sample_s_per_logit = 9.75e-9;
  p.link_bandwidth = 2.0e9;  // loopback gRPC
  p.link_latency_s = 150e-6;
  p.weight_bytes_per_param = 4;
  p.kv_bytes_per_value = 4;
  p.activation_bytes_per_value = 4;
  return p;
}

// Attention FLOPs per (query token, context position) pair, and the context positions `s`
// attends over in total (each new token sees every earlier position and itself).
double AttentionFlopsPerPair(const ModelConfig& c) {
  if (c.is_deepseek()) {
    // MLA with the up-projections absorbed: scores over the latent plus the rotary key, and the
    // weighted sum over the latent, per head.
    const DeepseekConfig& d = c.deepseek;
    return 2.0 * c.num_heads * (2.0 * d.kv_lora_rank + d.qk_rope_head_dim);
  }
  return 4.0 * c.num_heads * c.head_dim;
}

double Pairs(const SeqLoad& s) {
  const double t = static_cast<double>(s.tokens), ctx = static_cast<double>(s.context);
  return t * ctx - t * (t - 1) / 2;
}

double MlpParams(const ModelConfig& c, int64_t width) {
  return 3.0 * static_cast<double>(c.hidden_size) * static_cast<double>(width);
}

}  // namespace

std::vector<std::string> BuiltinProfileNames() {
  return {"h200", "h100", "a100-80g", "l40s", "cpu-here"};
}

absl::StatusOr<DeviceProfile> BuiltinProfile(absl::string_view name) {
  // Published figures: HBM size and bandwidth, dense BF16 tensor-core peak; links are NVLink
  // (H200/H100 900 GB/s, A100 600 GB/s both ways) or PCIe 4.0 x16 (L40S).
  if (name == "h200") return Gpu("h200", 141, 4800, 989, 450, 5);
  if (name == "h100") return Gpu("h100", 80, 3350, 989, 450, 5);
  if (name == "a100-80g") return Gpu("a100-80g", 80, 2039, 312, 300, 5);
  if (name == "l40s") return Gpu("l40s", 48, 864, 362, 25, 10);
  if (name == "cpu-here") return CpuHere();
  return absl::InvalidArgumentError(absl::StrCat(
      "--sim-device '", name, "' is not a known device (",
      absl::StrJoin(BuiltinProfileNames(), ", "), "); --sim-profile takes a JSON profile"));
}

absl::StatusOr<DeviceProfile> ProfileFromJson(absl::string_view json_text,
                                              absl::string_view source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  std::string base = "h200";
  if (j.contains("base")) {
    if (!j["base"].is_string()) return absl::InvalidArgumentError(absl::StrCat(source, ": base"));
    base = j["base"].get<std::string>();
  }
  auto p = BuiltinProfile(base);
  if (!p.ok())
    return absl::InvalidArgumentError(absl::StrCat(source, ": base: ", p.status().message()));
  struct Field {
    const char* key;
    double* value;
    double scale;
    double min, max;  // of the value as written
  };
  const Field fields[] = {
      {"memory_gib", &p->memory_bytes, double(1 << 30), 1e-3, 1e6},
      {"memory_bandwidth_gbps", &p->memory_bandwidth, 1e9, 1e-3, 1e6},
      {"kv_bandwidth_gbps", &p->kv_bandwidth, 1e9, 0, 1e6},
      {"tflops", &p->flops, 1e12, 1e-6, 1e6},
      {"step_overhead_us", &p->step_overhead_s, 1e-6, 0, 1e7},
      {"token_overhead_us", &p->token_overhead_s, 1e-6, 0, 1e6},
      {"pair_overhead_ns", &p->pair_overhead_s, 1e-9, 0, 1e6},
      {"sample_ns_per_logit", &p->sample_s_per_logit, 1e-9, 0, 1e6},
      {"link_bandwidth_gbps", &p->link_bandwidth, 1e9, 1e-6, 1e6},
      {"link_latency_us", &p->link_latency_s, 1e-6, 0, 1e7},
      {"serial_fraction", &p->serial_fraction, 1, 0, 1},
      {"weight_bytes_per_param", &p->weight_bytes_per_param, 1, 0.125, 8},
      {"kv_bytes_per_value", &p->kv_bytes_per_value, 1, 0.125, 8},
      {"activation_bytes_per_value", &p->activation_bytes_per_value, 1, 0.125, 8},
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "name" || it.key() == "base") continue;
    const Field* f = nullptr;
    for (const Field& candidate : fields) {
      if (it.key() == candidate.key) f = &candidate;
    }
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown field '", it.key(), "'"));
    }
    if (!it.value().is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", f->key, " is not a number"));
    }
    const double v = it.value().get<double>();
    if (!(v >= f->min && v <= f->max)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": ", f->key, " ", v, " is outside [", f->min, ", ", f->max, "]"));
    }
    *f->value = v * f->scale;
  }
  if (j.contains("name")) {
    if (!j["name"].is_string()) return absl::InvalidArgumentError(absl::StrCat(source, ": name"));
    p->name = j["name"].get<std::string>();
  } else {
    p->name = std::string(source);
  }
  return p;
}

absl::StatusOr<DeviceProfile> ProfileFromFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("--sim-profile ", path, ": cannot open"));
  std::stringstream text;
  text << f.rdbuf();
  if (text.str().size() > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("--sim-profile ", path, ": over 1 MiB"));
  }
  return ProfileFromJson(text.str(), absl::StrCat("--sim-profile ", path));
}

std::string ProfileToJson(const DeviceProfile& p) {
  json j = {{"name", p.name},
            {"memory_gib", p.memory_bytes / double(1 << 30)},
            {"memory_bandwidth_gbps", p.memory_bandwidth / 1e9},
            {"kv_bandwidth_gbps", p.kv_bandwidth / 1e9},
            {"tflops", p.flops / 1e12},
            {"step_overhead_us", p.step_overhead_s * 1e6},
            {"token_overhead_us", p.token_overhead_s * 1e6},
            {"pair_overhead_ns", p.pair_overhead_s * 1e9},
            {"sample_ns_per_logit", p.sample_s_per_logit * 1e9},
            {"link_bandwidth_gbps", p.link_bandwidth / 1e9},
            {"link_latency_us", p.link_latency_s * 1e6},
            {"serial_fraction", p.serial_fraction},
            {"weight_bytes_per_param", p.weight_bytes_per_param},
            {"kv_bytes_per_value", p.kv_bytes_per_value},
            {"activation_bytes_per_value", p.activation_bytes_per_value}};
  return j.dump(2);
}

double ExpectedDistinctExperts(int64_t experts, int64_t per_token, int64_t tokens) {
  if (experts <= 0 || per_token <= 0 || tokens <= 0) return 0;
  const double e = static_cast<double>(experts);
  const double miss = 1.0 - std::min(1.0, static_cast<double>(per_token) / e);
  return e * (1.0 - std::pow(miss, static_cast<double>(tokens)));
}

double StageWeightBytesAt(const ModelConfig& c, int64_t begin, int64_t end,
                          const DeviceProfile& profile) {
  double params = 0;
  for (int64_t l = begin; l < end; ++l) params += static_cast<double>(LayerParameterCount(c, l));
  if (begin == 0) params += static_cast<double>(EmbeddingParameterCount(c));
  if (end == c.num_layers) params += static_cast<double>(HeadParameterCount(c));
  return params * profile.weight_bytes_per_param;
}

double StageKvBytesPerToken(const ModelConfig& c, int64_t begin, int64_t end,
                            const DeviceProfile& profile) {
  return static_cast<double>(end - begin) * static_cast<double>(KvCacheValuesPerToken(c)) *
         profile.kv_bytes_per_value;
}

double StageWorkspaceBytes(const ModelConfig& c, bool last_stage, int64_t max_step_tokens,
                           int64_t max_sampled_rows) {
  // Library workspaces (cuBLASLt), cached plans and index arrays: a fixed allowance.
  constexpr double kFixedBytes = 256.0 * (1 << 20);
  const double attention = static_cast<double>(c.num_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_kv_heads * c.head_dim);
  const double hidden = static_cast<double>(c.hidden_size);
  // x, h, q, attn, k, v, gate_up and act (model/llama.cc), per token of a step.
  const double per_token = hidden + std::max(hidden, attention) + 2 * attention + 2 * kv +
                           3 * static_cast<double>(c.intermediate_size);
  double values = static_cast<double>(max_step_tokens) * per_token;
  if (last_stage) {
    const int64_t rows = std::min(max_sampled_rows, max_step_tokens);
    values += static_cast<double>(rows) * (hidden + static_cast<double>(c.vocab_size));
  }
  return values * sizeof(float) + kFixedBytes;
}

int64_t KvBlocksThatFit(const ModelConfig& c, int64_t begin, int64_t end, double free_bytes,
                        double reserve_bytes, int64_t block_size, const DeviceProfile& precision) {
  const double left = free_bytes - StageWeightBytesAt(c, begin, end, precision) - reserve_bytes;
  const double per_block =
      StageKvBytesPerToken(c, begin, end, precision) * static_cast<double>(block_size);
  if (left <= 0 || per_block <= 0) return 0;
  return static_cast<int64_t>(std::min(left / per_block, 9e18));
}

StepCost StageStepCost(const ModelConfig& c, int64_t begin, int64_t end,
                       absl::Span<const SeqLoad> batch, const DeviceProfile& p) {
  StepCost cost;
  double tokens = 0, pairs = 0, context = 0, logit_rows = 0;
  for (const SeqLoad& s : batch) {
    tokens += static_cast<double>(s.tokens);
    pairs += Pairs(s);
    context += static_cast<double>(s.context);
    if (s.logits && end == c.num_layers) logit_rows += 1;  // only the last stage has a head
  }
  if (tokens == 0) return cost;
  const double wb = p.weight_bytes_per_param;
  const double attention_per_pair = AttentionFlopsPerPair(c);
  const double kv_per_position =
      static_cast<double>(KvCacheValuesPerToken(c)) * p.kv_bytes_per_value;
  const DeepseekConfig& d = c.deepseek;
  for (int64_t l = begin; l < end; ++l) {
    const double all = static_cast<double>(LayerParameterCount(c, l));
    if (c.is_deepseek() && d.IsMoeLayer(l)) {
      const double expert = MlpParams(c, d.moe_intermediate_size);
      const double dense = all - static_cast<double>(d.n_routed_experts) * expert;
      const double touched = ExpectedDistinctExperts(d.n_routed_experts, d.num_experts_per_tok,
                                                     static_cast<int64_t>(tokens));
      cost.weight_bytes += (dense + touched * expert) * wb;
      cost.flops += 2.0 * tokens * (dense + static_cast<double>(d.num_experts_per_tok) * expert);
    } else {
      cost.weight_bytes += all * wb;
      cost.flops += 2.0 * tokens * all;
    }
    cost.flops += attention_per_pair * pairs;
    cost.kv_bytes += kv_per_position * context;
  }
  const double H = static_cast<double>(c.hidden_size), V = static_cast<double>(c.vocab_size);
  if (begin == 0) cost.weight_bytes += tokens * H * wb;  // the embedding rows read
  if (end == c.num_layers && logit_rows > 0) {
    cost.weight_bytes += (V * H + H) * wb;
    cost.flops += 2.0 * logit_rows * V * H;
  }
  const double kv_bandwidth = p.kv_bandwidth > 0 ? p.kv_bandwidth : p.memory_bandwidth;
  const double memory = cost.weight_bytes / p.memory_bandwidth + cost.kv_bytes / kv_bandwidth;
  const double math = cost.flops / p.flops;
  const double roofline = std::max(memory, math) + p.serial_fraction * std::min(memory, math);
  cost.seconds = roofline + p.step_overhead_s +
                 p.token_overhead_s * tokens * static_cast<double>(end - begin) +
                 p.pair_overhead_s * pairs * static_cast<double>(end - begin) +
                 p.sample_s_per_logit * logit_rows * V;
  return cost;
}

double HopSeconds(const ModelConfig& c, int64_t tokens, const DeviceProfile& p) {
  return static_cast<double>(tokens) * static_cast<double>(c.hidden_size) *
             p.activation_bytes_per_value / p.link_bandwidth +
         p.link_latency_s;
}

DeviceProfile CalibrateCpuProfile(ModelStage& stage) {
  DeviceProfile p = *BuiltinProfile("cpu-here");
  const ModelConfig& c = stage.config();
  const KvCacheSpec& kv = stage.kv_spec();
  const int64_t room = std::min(kv.block_size * kv.num_blocks, c.max_position_embeddings);
  const bool first = stage.layer_begin() == 0, last = stage.layer_end() == c.num_layers;
  // A one-token decode step at a 256-token context (the GEMV and paged attention) and a 64-token
  // prefill chunk (the GEMM), both inside the range cpu-here was fitted on, alternated so that a
  // burst of load on a shared host falls on both.
  struct Probe {
    SequenceStep step;
    std::vector<float> hidden;
    std::vector<double> seconds;
    double predicted = 0;
  };
  std::vector<Probe> probes;
  const std::pair<int64_t, int64_t> shapes[] = {{1, std::min<int64_t>(256, room)},
                                                {std::min<int64_t>(64, room), 0}};
  for (auto [tokens, context] : shapes) {
    context = std::max(context, tokens);
    Probe probe;
    probe.step.tokens.assign(tokens, 0);
    probe.step.start_pos = context - tokens;
    probe.step.compute_logits = true;
    for (int64_t b = 0; b * kv.block_size < context; ++b) probe.step.block_table.push_back(b);
    probe.hidden.assign(first ? 0 : tokens * stage.activation_width(), 0.0f);
    const SeqLoad load{tokens, context, last};
    probe.predicted = StageStepCost(c, stage.layer_begin(), stage.layer_end(), {load}, p).seconds;
    probes.push_back(std::move(probe));
  }
  // A warm-up round, then at least 3 timed rounds and at most 7, stopping after 1 s.
  const auto begin = std::chrono::steady_clock::now();
  for (int round = 0; round < 8; ++round) {
    for (Probe& probe : probes) {
      const auto start = std::chrono::steady_clock::now();
      if (!stage.Forward({probe.step}, probe.hidden).ok()) return p;
      const auto end = std::chrono::steady_clock::now();
      if (round > 0) probe.seconds.push_back(std::chrono::duration<double>(end - start).count());
    }
    const double spent =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    if (round >= 3 && spent > 1.0) break;
  }
  std::vector<double> ratios;
  for (Probe& probe : probes) {
    std::sort(probe.seconds.begin(), probe.seconds.end());
    const double median = probe.seconds[probe.seconds.size() / 2];
    if (probe.predicted > 0) ratios.push_back(median / probe.predicted);
  }
  if (ratios.empty()) return p;
  double log_sum = 0;
  for (double r : ratios) log_sum += std::log(r);
  const double k = std::clamp(std::exp(log_sum / ratios.size()), 0.05, 20.0);
  p.memory_bandwidth /= k;
  p.kv_bandwidth /= k;
  p.flops /= k;
  p.pair_overhead_s *= k;
  p.step_overhead_s *= k;
  p.token_overhead_s *= k;
  p.sample_s_per_logit *= k;
  p.name = absl::StrFormat("cpu-here x %.2f (calibrated at load)", k);
  return p;
}

}  // namespace shardserve
