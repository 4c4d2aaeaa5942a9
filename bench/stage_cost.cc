// Predicted against measured step time of a real CPU stage: the cost model's fidelity check, and
// the fit that calibrates the cpu-here profile (model/cost_model.h).
//
// For each layer range of each model it loads the stage on the CPU backend and runs real
// StageRuntime steps: decode micro-batches of 1 to 32 sequences at --context positions, and
// prefill chunks of 64 to 512 tokens of one sequence. The last stage samples greedily, as a
// worker does. Each point is the median of --reps rounds after a warm-up round, every round
// running every point once; the prediction is StageStepCost on --profile.
//
//   stage_cost --model DIR [--range 0-7 --range 8-11] [--model DIR2 [--range B-E]...]
//              [--profile cpu-here] [--threads 1] [--reps 7] [--context 256]
//              [--calibrate] [--fit] [--json]
//
// --range applies to the --model before it (default: all its layers). --calibrate also predicts
// each stage with the profile a CPU worker reports after loading it (CalibrateCpuProfile, a short
// measurement at load) and reports that profile's error beside the built-in one. --fit fits the
// profile's bandwidths, FLOP/s, step, token, attention-pair and sampling costs and its serial
// fraction by least squares on relative error over every model's points, and prints the fitted
// profile as JSON; with one model shape the FLOP rate and the per-token cost are the same column,
// so fit on two or more widths (docs/SCALING.md uses three).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/layers.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/cost_model.h"
#include "model/stage.h"
#include "nlohmann/json.hpp"
#include "worker/activation_link.h"
#include "worker/stage_runtime.h"

namespace shardserve {
namespace {

struct Point {
  size_t model = 0;  // index into Args::models
  int64_t begin = 0, end = 0;
  std::string kind;  // decode or prefill
  int64_t size = 0;  // sequences (decode) or chunk tokens (prefill)
  std::vector<SeqLoad> loads;
  double measured = 0;
  DeviceProfile calibrated;  // --calibrate: what the worker would report for this stage
};

struct ModelArg {
  std::string dir;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [begin, end)
  ModelConfig config;
};

struct Args {
  std::vector<ModelArg> models;
  std::string profile = "cpu-here";
  int threads = 1, reps = 7;
  int64_t context = 256;
  bool calibrate = false, fit = false, json = false;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One plan of `p`; sequence ids start at `first_id`; `release` are the previous ones.
v1::StepPlan MakePlan(const Point& p, uint64_t step, uint64_t first_id,
                      const std::vector<uint64_t>& release, int64_t block_size) {
  v1::StepPlan plan;
  plan.set_step_id(step);
  for (uint64_t id : release) plan.add_release_sequence_ids(id);
  int32_t next_block = 0;
  for (size_t i = 0; i < p.loads.size(); ++i) {
    const SeqLoad& l = p.loads[i];
    v1::SequencePlan* s = plan.add_sequences();
    s->set_sequence_id(first_id + i);
    const int64_t start = l.context - l.tokens;
    s->set_start_pos(start);
    for (int64_t t = 0; t < l.tokens; ++t) s->add_tokens(static_cast<int32_t>(400 + (t % 40)));
    for (int64_t t = 0; t < start; ++t) s->add_prefix_tokens(static_cast<int32_t>(400 + (t % 40)));
    for (int64_t b = 0; b < (l.context + block_size - 1) / block_size; ++b) {
      s->add_block_table(next_block++);
    }
    s->set_sample(true);
    v1::StepSampling* sampling = s->mutable_sampling();
    sampling->set_temperature(0);
    sampling->set_top_p(1);
    sampling->set_repetition_penalty(1);
  }
  return plan;
}

// A loaded stage for one layer range, with links to feed and drain it.
struct Rig {
  std::unique_ptr<StageRuntime> runtime;
  std::unique_ptr<ActivationLink> up, down;
  ModelConfig config;
  DeviceProfile calibrated;
  std::vector<uint64_t> release;  // the sequences of its previous step
  uint64_t step = 0;
};

constexpr int64_t kBlockSize = 16;

int64_t BlocksFor(const Point& p) {
  int64_t blocks = 0;
  for (const SeqLoad& l : p.loads) blocks += (l.context + kBlockSize - 1) / kBlockSize;
  return blocks;
}

absl::StatusOr<Rig> MakeRig(const Args& a, const std::string& model, Backend* backend,
                            int64_t begin, int64_t end, int64_t blocks) {
  Rig rig;
  StageSpec spec{begin, end};
  KvCacheSpec kv{kBlockSize, blocks};
  ASSIGN_OR_RETURN(auto stage, LoadStage(model, spec, kv, backend));
  rig.config = stage->config();
  if (a.calibrate) rig.calibrated = CalibrateCpuProfile(*stage);
  rig.runtime = std::make_unique<StageRuntime>(std::move(stage), 4096);
  rig.up = NewLocalLink("previous", absl::Seconds(10));
  rig.down = NewLocalLink("next", absl::Seconds(10));
  rig.runtime->SetLinks(rig.up.get(), rig.down.get());
  return rig;
}

// One step of `p` on its stage; its wall time.
absl::StatusOr<double> RunOnce(Rig& rig, const Point& p) {
  int64_t tokens = 0;
  for (const SeqLoad& l : p.loads) tokens += l.tokens;
  const uint64_t step = ++rig.step;
  const uint64_t first_id = 1000 * step;
  v1::StepPlan plan = MakePlan(p, step, first_id, rig.release, kBlockSize);
  if (p.begin > 0) {
    const int64_t h = rig.config.hidden_size;
    RETURN_IF_ERROR(rig.up->Send(step, {tokens, h, std::vector<float>(tokens * h, 0.01f)}));
  }
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(rig.runtime->Execute(plan).status());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (p.end < rig.config.num_layers) RETURN_IF_ERROR(rig.down->Recv(step).status());
  rig.release.clear();
  for (size_t i = 0; i < p.loads.size(); ++i) rig.release.push_back(first_id + i);
  return s;
}

// Every point's median over --reps rounds; each round runs every point once, so the machine's
// drifts fall on all points alike.
absl::Status MeasureAll(const Args& a, Backend* backend, std::vector<Point>& points) {
  std::vector<Rig> rigs;
  std::vector<size_t> rig_of(points.size());
  for (size_t m = 0; m < a.models.size(); ++m) {
    for (auto [b, e] : a.models[m].ranges) {
      auto mine = [&](const Point& p) { return p.model == m && p.begin == b && p.end == e; };
      int64_t blocks = 1;
      for (const Point& p : points) {
        if (mine(p)) blocks = std::max(blocks, BlocksFor(p));
      }
      ASSIGN_OR_RETURN(Rig rig, MakeRig(a, a.models[m].dir, backend, b, e, blocks));
      rigs.push_back(std::move(rig));
      for (size_t i = 0; i < points.size(); ++i) {
        if (mine(points[i])) rig_of[i] = rigs.size() - 1;
      }
    }
  }
  std::vector<std::vector<double>> times(points.size());
  for (int rep = 0; rep <= a.reps; ++rep) {
    for (size_t i = 0; i < points.size(); ++i) {
      ASSIGN_OR_RETURN(double s, RunOnce(rigs[rig_of[i]], points[i]));
      if (rep > 0) times[i].push_back(s);  // the first round warms up
    }
    std::fprintf(stderr, "\rstage_cost: round %d of %d", rep, a.reps);
  }
  for (size_t i = 0; i < points.size(); ++i) {
    points[i].measured = Median(times[i]);
    points[i].calibrated = rigs[rig_of[i]].calibrated;
  }
  return absl::OkStatus();
}

double Predict(const Args& a, const Point& p, const DeviceProfile& profile) {
  return StageStepCost(a.models[p.model].config, p.begin, p.end, p.loads, profile).seconds;
}

// Mean and worst relative error of `profile` (or, with `calibrated`, of each point's profile
// calibrated at load).
double Mape(const Args& a, const std::vector<Point>& points, const DeviceProfile& profile,
            bool calibrated, double* worst) {
  double sum = 0;
  *worst = 0;
  for (const Point& p : points) {
    const double predicted = Predict(a, p, calibrated ? p.calibrated : profile);
    const double e = std::abs(predicted - p.measured) / p.measured;
    sum += e;
    *worst = std::max(*worst, e);
  }
  return sum / points.size();
}

constexpr int kTerms = 7;  // 1/bandwidth, 1/peak, step, token, sampling, pair, 1/K-V bandwidth
using Features = std::array<double, kTerms>;

// Least squares on relative error with every coefficient non-negative (each subset of the
// columns solved, the best non-negative solution kept); false when none is.
bool SolveNonNegative(const std::vector<Features>& rows, const std::vector<Point>& points,
                      Features* out) {
  constexpr int kN = kTerms;
  double best_err = 1e300;
  std::array<double, kN> best{};
  for (int mask = 1; mask < (1 << kN); ++mask) {
    // Normal equations over the chosen columns, rows weighted by 1 / measured.
    double a[kN][kN + 1] = {};
    for (size_t r = 0; r < rows.size(); ++r) {
      const double w = 1.0 / points[r].measured;
      for (int i = 0; i < kN; ++i) {
        if (!(mask >> i & 1)) continue;
        for (int j = 0; j < kN; ++j) {
          if (mask >> j & 1) a[i][j] += rows[r][i] * rows[r][j] * w * w;
        }
        a[i][kN] += rows[r][i] * points[r].measured * w * w;
      }
    }
    for (int i = 0; i < kN; ++i) {
      if (!(mask >> i & 1)) a[i][i] = 1;  // unchosen: x_i = 0
    }
    bool singular = false;
    for (int col = 0; col < kN && !singular; ++col) {  // Gauss-Jordan with partial pivoting
      int piv = col;
      for (int r = col + 1; r < kN; ++r) {
        if (std::abs(a[r][col]) > std::abs(a[piv][col])) piv = r;
      }
      if (std::abs(a[piv][col]) < 1e-300) {
        singular = true;
        break;
      }
      std::swap(a[col], a[piv]);
      for (int r = 0; r < kN; ++r) {
        if (r == col) continue;
        const double f = a[r][col] / a[col][col];
        for (int k = col; k <= kN; ++k) a[r][k] -= f * a[col][k];
      }
    }
    if (singular) continue;
    std::array<double, kN> x{};
    bool ok = true;
    for (int i = 0; i < kN; ++i) {
      x[i] = a[i][kN] / a[i][i];
      if (x[i] < 0) ok = false;
    }
    if (!ok || x[0] <= 0 || x[1] <= 0) continue;
    double err = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      double t = 0;
      for (int i = 0; i < kN; ++i) t += rows[r][i] * x[i];
      err += std::abs(t - points[r].measured) / points[r].measured;
    }
    if (err < best_err) {
      best_err = err;
      best = x;
    }
  }
  *out = best;
  return best_err < 1e300;
}

// For a given serial fraction s a step's time is linear in (1 / bandwidth, 1 / peak, step
// overhead, token overhead, sampling cost, pair overhead, 1 / K/V bandwidth) once it is known
// whether memory or math is the larger term of each point: the larger counts whole, the smaller
// s times. Fit them for s = 0, 0.1, ..., 1, re-deciding the larger term from each solution until
// it settles, and keep the s whose profile has the least mean relative error.
DeviceProfile Fit(const Args& a, const std::vector<Point>& points, DeviceProfile p) {
  std::vector<Features> base;
  for (const Point& pt : points) {
    const ModelConfig& c = a.models[pt.model].config;
    DeviceProfile unit = p;  // the features: each term's coefficient at unit parameters
    unit.memory_bandwidth = 1;
    unit.flops = 1e300;
    unit.step_overhead_s = unit.token_overhead_s = unit.sample_s_per_logit = 0;
    unit.pair_overhead_s = 0;
    unit.kv_bandwidth = 1;
    const StepCost cost = StageStepCost(c, pt.begin, pt.end, pt.loads, unit);
    int64_t tokens = 0, logits = 0;
    double pairs = 0;
    for (const SeqLoad& l : pt.loads) {
      tokens += l.tokens;
      pairs += static_cast<double>(l.tokens) * l.context - l.tokens * (l.tokens - 1) / 2.0;
      logits += l.logits && pt.end == c.num_layers;
    }
    base.push_back(
        {cost.weight_bytes, cost.flops, 1.0, static_cast<double>(tokens * (pt.end - pt.begin)),
         static_cast<double>(logits * c.vocab_size), pairs * (pt.end - pt.begin), cost.kv_bytes});
  }
  auto profile_of = [&](const Features& x, double s) {
    DeviceProfile q = p;
    q.serial_fraction = s;
    q.memory_bandwidth = 1 / x[0];
    q.flops = 1 / x[1];
    q.step_overhead_s = x[2];
    q.token_overhead_s = x[3];
    q.sample_s_per_logit = x[4];
    q.pair_overhead_s = x[5];
    q.kv_bandwidth = x[6] > 0 ? 1 / x[6] : 1e15;
    q.name = "cpu-here";
    return q;
  };
  DeviceProfile best = p;
  double best_err = 1e300;
  for (int tenth = 0; tenth <= 10; ++tenth) {
    const double s = tenth / 10.0;
    std::vector<bool> memory_larger(points.size(), true);
    for (int round = 0; round < 8; ++round) {
      std::vector<Features> rows = base;
      for (size_t r = 0; r < rows.size(); ++r) {
        const double mem = memory_larger[r] ? 1 : s, math = memory_larger[r] ? s : 1;
        rows[r][0] *= mem;
        rows[r][6] *= mem;
        rows[r][1] *= math;
      }
      Features x;
      if (!SolveNonNegative(rows, points, &x)) break;
      bool settled = true;
      for (size_t r = 0; r < rows.size(); ++r) {
        const bool larger = base[r][0] * x[0] + base[r][6] * x[6] >= base[r][1] * x[1];
        settled = settled && larger == memory_larger[r];
        memory_larger[r] = larger;
      }
      const DeviceProfile q = profile_of(x, s);
      double worst = 0;
      const double err = Mape(a, points, q, false, &worst);
      if (err < best_err) {
        best_err = err;
        best = q;
      }
      if (settled) break;
    }
  }
  return best;
}

absl::Status Run(Args& a) {
  for (ModelArg& m : a.models) {
    ASSIGN_OR_RETURN(m.config, ModelConfig::FromFile(m.dir + "/config.json"));
    if (m.ranges.empty()) m.ranges.push_back({0, m.config.num_layers});
    for (auto [b, e] : m.ranges) {
      if (e > m.config.num_layers) {
        return absl::InvalidArgumentError(absl::StrCat("--range ", LayerRangeText(b, e), ": ",
                                                       m.dir, " has ", m.config.num_layers,
                                                       " layers"));
      }
    }
  }
  ASSIGN_OR_RETURN(DeviceProfile profile, BuiltinProfile(a.profile));
  CpuBackendOptions options;
  options.threads = a.threads;
  auto backend = NewCpuBackend(options);
  std::vector<Point> points;
  for (size_t m = 0; m < a.models.size(); ++m) {
    for (auto [b, e] : a.models[m].ranges) {
      for (int64_t n : {1, 2, 4, 8, 16, 32}) {
        points.push_back(
            {m, b, e, "decode", n, std::vector<SeqLoad>(n, SeqLoad{1, a.context, true}), 0, {}});
      }
      for (int64_t n : {64, 128, 256, 512}) {
        points.push_back({m, b, e, "prefill", n, {SeqLoad{n, n, true}}, 0, {}});
      }
    }
  }
  RETURN_IF_ERROR(MeasureAll(a, backend.get(), points));
  std::fprintf(stderr, "\n");
  if (a.fit) profile = Fit(a, points, profile);
  double worst = 0, calibrated_worst = 0;
  const double mape = Mape(a, points, profile, false, &worst);
  const double calibrated_mape =
      a.calibrate ? Mape(a, points, profile, true, &calibrated_worst) : 0;
  nlohmann::json out;
  out["profile"] = nlohmann::json::parse(ProfileToJson(profile));
  out["mape"] = mape;
  out["worst_error"] = worst;
  if (a.calibrate) {
    out["calibrated_mape"] = calibrated_mape;
    out["calibrated_worst_error"] = calibrated_worst;
  }
  for (const Point& p : points) {
    const double predicted = Predict(a, p, profile);
    nlohmann::json j = {{"model", a.models[p.model].dir},
                        {"layers", LayerRangeText(p.begin, p.end)},
                        {"kind", p.kind},
                        {"size", p.size},
                        {"measured_ms", p.measured * 1e3},
                        {"predicted_ms", predicted * 1e3},
                        {"error", (predicted - p.measured) / p.measured}};
    if (a.calibrate) {
      const double c = Predict(a, p, p.calibrated);
      j["calibrated_ms"] = c * 1e3;
      j["calibrated_error"] = (c - p.measured) / p.measured;
      j["calibrated_profile"] = p.calibrated.name;
    }
    out["points"].push_back(j);
  }
  if (a.json) {
    std::printf("%s\n", out.dump().c_str());
    return absl::OkStatus();
  }
  const bool many = a.models.size() > 1;
  std::printf(
      "|%s layers | step | measured ms | predicted ms | error |%s\n|%s---|---|---|---|---|%s\n",
      many ? " model |" : "", a.calibrate ? " calibrated ms | error |" : "", many ? "---|" : "",
      a.calibrate ? "---|---|" : "");
  for (const auto& p : out["points"]) {
    std::string model = many ? absl::StrCat(" ", p["model"].get<std::string>(), " |") : "";
    std::string calibrated =
        a.calibrate ? absl::StrFormat(" %.3f | %+.1f%% |", p["calibrated_ms"].get<double>(),
                                      100 * p["calibrated_error"].get<double>())
                    : "";
    std::printf("|%s %s | %s %lld | %.3f | %.3f | %+.1f%% |%s\n", model.c_str(),
                p["layers"].get<std::string>().c_str(), p["kind"].get<std::string>().c_str(),
                static_cast<long long>(p["size"].get<int64_t>()), p["measured_ms"].get<double>(),
                p["predicted_ms"].get<double>(), 100 * p["error"].get<double>(),
                calibrated.c_str());
  }
  std::printf("%s: MAPE %.1f%%, worst %.1f%%\nprofile: %s\n", a.fit ? "fitted" : "built-in",
              100 * mape, 100 * worst, ProfileToJson(profile).c_str());
  if (a.calibrate) {
    std::printf("calibrated at load (per stage): MAPE %.1f%%, worst %.1f%%\n",
                100 * calibrated_mape, 100 * calibrated_worst);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) {
  shardserve::Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "stage_cost: %s needs a value\n", f.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (f == "--model") {
      a.models.push_back({value(), {}, {}});
    } else if (f == "--range") {
      if (a.models.empty()) {
        std::fprintf(stderr, "stage_cost: --range belongs to a --model before it\n");
        return 2;
      }
      std::vector<std::string> be = absl::StrSplit(value(), '-');
      int64_t b = 0, e = 0;
      if (be.size() != 2 || !absl::SimpleAtoi(be[0], &b) || !absl::SimpleAtoi(be[1], &e) || b > e) {
        std::fprintf(stderr, "stage_cost: --range wants B-E (inclusive)\n");
        return 2;
      }
      a.models.back().ranges.push_back({b, e + 1});
    } else if (f == "--profile") {
      a.profile = value();
    } else if (f == "--threads") {
      a.threads = std::atoi(value().c_str());
    } else if (f == "--reps") {
      a.reps = std::max(1, std::atoi(value().c_str()));
    } else if (f == "--context") {
      a.context = std::max(1, std::atoi(value().c_str()));
    } else if (f == "--calibrate") {
      a.calibrate = true;
    } else if (f == "--fit") {
      a.fit = true;
    } else if (f == "--json") {
      a.json = true;
    } else {
      std::fprintf(stderr, "stage_cost: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  if (a.models.empty()) {
    std::fprintf(stderr,
                 "usage: stage_cost --model DIR [--range B-E]... [--model DIR [--range B-E]...]... "
                 "[--calibrate] [--fit] [--json]\n");
    return 2;
  }
  if (absl::Status s = shardserve::Run(a); !s.ok()) {
    std::fprintf(stderr, "stage_cost: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
