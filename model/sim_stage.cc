#include "model/sim_stage.h"

#include <sys/prctl.h>

#include <cerrno>
#include <ctime>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/layers.h"
#include "common/status.h"

namespace shardserve {
namespace {

// Sleeps until `deadline` on the real-time clock, with no spinning and a 1 us timer slack so
// that many simulated stages on a few cores keep their deadlines.
void SleepUntil(absl::Time deadline) {
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  const timespec ts = absl::ToTimespec(deadline);
  while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

// A time as three exact 21-bit float pieces (nanoseconds since the epoch fit in 63 bits).
void EncodeTime(absl::Time t, float* out) {
  const uint64_t ns = static_cast<uint64_t>(absl::ToUnixNanos(t));
  for (int i = 0; i < 3; ++i) out[i] = static_cast<float>((ns >> (21 * i)) & 0x1FFFFF);
}

absl::StatusOr<absl::Time> DecodeTime(const float* in) {
  uint64_t ns = 0;
  for (int i = 0; i < 3; ++i) {
    if (!(in[i] >= 0 && in[i] < float(1 << 21)) || in[i] != static_cast<float>(int64_t(in[i]))) {
      return absl::InvalidArgumentError("simulated activations carry no arrival time");
    }
    ns |= static_cast<uint64_t>(in[i]) << (21 * i);
  }
  return absl::FromUnixNanos(static_cast<int64_t>(ns));
}

class SimStage final : public ModelStage {
 public:
  SimStage(const ModelConfig& c, const StageSpec& spec, const KvCacheSpec& kv,
           const SimOptions& options)
      : config_(c), kv_(kv), begin_(spec.layer_begin), end_(spec.layer_end), options_(options) {}

  const ModelConfig& config() const override { return config_; }
  int64_t layer_begin() const override { return begin_; }
  int64_t layer_end() const override { return end_; }
  const KvCacheSpec& kv_spec() const override { return kv_; }
  int64_t KvBytesPerToken() const override {
    return static_cast<int64_t>(StageKvBytesPerToken(config_, begin_, end_, options_.profile));
  }
  int64_t activation_width() const override { return kSimActivationWidth; }

  absl::StatusOr<StepOutput> Forward(absl::Span<const SequenceStep> batch,
                                     absl::Span<const float> hidden_in) override {
    const bool first = begin_ == 0, last = end_ == config_.num_layers;
    int64_t total = 0;
    std::vector<SeqLoad> loads;
    loads.reserve(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      const SequenceStep& s = batch[i];
      RETURN_IF_ERROR(ValidateSequenceStep(static_cast<int64_t>(i), s.start_pos, s.tokens,
                                           s.block_table, config_, kv_, first));
      total += static_cast<int64_t>(s.tokens.size());
      loads.push_back({static_cast<int64_t>(s.tokens.size()),
                       s.start_pos + static_cast<int64_t>(s.tokens.size()),
                       last && s.compute_logits});
    }
    if (batch.empty()) return absl::InvalidArgumentError("empty step");
    absl::Time start = absl::Now();
    if (!first) {
      if (static_cast<int64_t>(hidden_in.size()) != total * kSimActivationWidth) {
        return absl::InvalidArgumentError(absl::StrCat("hidden_in has ", hidden_in.size(),
                                                       " values, expected ", total, " x ",
                                                       kSimActivationWidth));
      }
      ASSIGN_OR_RETURN(absl::Time arrival, DecodeTime(hidden_in.data()));
      start = std::max(start, arrival);
    }
    const StepCost cost = StageStepCost(config_, begin_, end_, loads, options_.profile);
    const absl::Time done = start + absl::Seconds(cost.seconds);
    SleepUntil(done);
    StepOutput out;
    out.busy_seconds = cost.seconds;
    if (!last) {
      out.rows = total;
      out.cols = kSimActivationWidth;
      out.data.assign(total * kSimActivationWidth, 0.0f);
      EncodeTime(done + absl::Seconds(HopSeconds(config_, total, options_.profile)),
                 out.data.data());
      return out;
    }
    for (const SequenceStep& s : batch) {
      if (!s.compute_logits) continue;
      out.tokens.push_back(SimNextToken(options_.seed,
                                        s.start_pos + static_cast<int64_t>(s.tokens.size()),
                                        s.tokens.back(), config_.vocab_size));
    }
    out.rows = static_cast<int64_t>(out.tokens.size());
    return out;
  }

 private:
  const ModelConfig config_;
  const KvCacheSpec kv_;
  const int64_t begin_, end_;
  const SimOptions options_;
};

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

int32_t SimNextToken(uint64_t seed, int64_t position, int32_t last_token, int64_t vocab_size) {
  const uint64_t h = Mix(Mix(seed + 0x9e3779b97f4a7c15ull) ^ Mix(static_cast<uint64_t>(position)) ^
                         (static_cast<uint64_t>(static_cast<uint32_t>(last_token)) << 32));
  const int32_t letter = static_cast<int32_t>((h >> 8) % 26);
  if (vocab_size >= 448) {
    // The synthetic tokenizer: printable ASCII from id 259, "▁" + printable ASCII from 354.
    const bool word_start = h % 5 == 0;
    return (word_start ? 354 : 259) + ('a' - 33) + letter;
  }
  if (vocab_size >= 3 + 'z' + 1) return 3 + 'a' + letter;  // byte-fallback pieces <0x61>..
  return static_cast<int32_t>(h % static_cast<uint64_t>(vocab_size));
}

absl::StatusOr<std::unique_ptr<ModelStage>> LoadSimStage(const std::string& path,
                                                         const StageSpec& spec,
                                                         const KvCacheSpec& kv_in,
                                                         const SimOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config,
                   ModelConfig::FromFile((std::filesystem::path(path) / "config.json").string()));
  StageSpec s = spec;
  if (s.layer_end < 0) s.layer_end = config.num_layers;
  if (s.layer_begin < 0 || s.layer_begin >= s.layer_end || s.layer_end > config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layers ", LayerRangeText(s.layer_begin, s.layer_end), " are not a range of the model's ",
        config.num_layers, " layers (0-", config.num_layers - 1, ")"));
  }
  KvCacheSpec kv = kv_in;
  RETURN_IF_ERROR(ResolveKvSpec(config, &kv));
  const DeviceProfile& p = options.profile;
  const double weights = StageWeightBytesAt(config, s.layer_begin, s.layer_end, p);
  const double kv_bytes = StageKvBytesPerToken(config, s.layer_begin, s.layer_end, p) *
                          static_cast<double>(kv.block_size) * static_cast<double>(kv.num_blocks);
  if (weights + kv_bytes > p.memory_bytes) {
    constexpr double kGiB = double(1 << 30);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "layers %s need %.1f GiB of weights and %.1f GiB of KV cache (%d blocks); the "
        "simulated %s has %.1f GiB",
        LayerRangeText(s.layer_begin, s.layer_end), weights / kGiB, kv_bytes / kGiB, kv.num_blocks,
        p.name, p.memory_bytes / kGiB));
  }
  return std::unique_ptr<ModelStage>(new SimStage(config, s, kv, options));
}

}  // namespace shardserve
