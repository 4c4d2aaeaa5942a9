#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace shardserve {
namespace {

void ApplyPenalties(std::vector<float>& logits, const SamplingParams& p,
                    absl::Span<const int32_t> history) {
  if (p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f) {
    return;
  }
  std::unordered_map<int32_t, int> counts;
  for (int32_t t : history) {
    if (t >= 0 && t < static_cast<int32_t>(logits.size())) ++counts[t];
  }
  for (const auto& [t, n] : counts) {
    float& l = logits[t];
    if (p.repetition_penalty != 1.0f)
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
  }
}

float LogSumExp(const std::vector<float>& v) {
  const float m = *std::max_element(v.begin(), v.end());
  double s = 0;
  for (float x : v) s += std::exp(static_cast<double>(x - m));
  return m + static_cast<float>(std::log(s));
}

}  // namespace

SampleResult Sample(absl::Span<const float> raw, const SamplingParams& p, int64_t position,
                    absl::Span<const int32_t> history) {
  std::vector<float> logits(raw.begin(), raw.end());
  ApplyPenalties(logits, p, history);
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (p.temperature == 0.0f) {
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return {best, logits[best] - LogSumExp(logits)};
  }
  for (float& l : logits) l /= p.temperature;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int32_t keep = vocab;
  if (p.top_k > 0 && p.top_k < vocab) {
    keep = p.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }
  const float max_logit = logits[order[0]];
  std::vector<double> probs(keep);
  double total = 0;
  for (int32_t i = 0; i < keep; ++i) {
    probs[i] = std::exp(static_cast<double>(logits[order[i]] - max_logit));
    total += probs[i];
  }
  // min_p: relative to the most likely token.
  if (p.min_p > 0.0f) {
    int32_t n = 0;
    while (n < keep && probs[n] >= p.min_p * probs[0]) ++n;
    keep = std::max(n, 1);
  }
  // top_p: the smallest prefix whose mass reaches top_p.
  if (p.top_p < 1.0f) {
    double all = 0;
    for (int32_t i = 0; i < keep; ++i) all += probs[i];
    double cum = 0;
    int32_t n = 0;
    while (n < keep) {
      cum += probs[n++];
      if (cum >= p.top_p * all) break;
    }
    keep = std::max(n, 1);
  }
  double kept = 0;
  for (int32_t i = 0; i < keep; ++i) kept += probs[i];
  const double u = SamplingUniform(p.seed, position) * kept;
  double cum = 0;
  int32_t chosen = keep - 1;
  for (int32_t i = 0; i < keep; ++i) {
    cum += probs[i];
    if (u < cum) {
      chosen = i;
      break;
    }
  }
  (void)total;
  // Never a token of zero probability (a masked one), whatever the rounding.
  while (chosen > 0 && probs[chosen] == 0) --chosen;
  return {order[chosen], static_cast<float>(std::log(probs[chosen] / kept))};
}

void MaskLogits(absl::string_view allowed, absl::Span<float> logits) {
  const float off = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    const size_t byte = i >> 3;
    if (byte >= allowed.size() ||
        ((static_cast<unsigned char>(allowed[byte]) >> (i & 7)) & 1) == 0) {
      logits[i] = off;
    }
  }
}

std::vector<std::pair<int32_t, float>> TopLogprobs(absl::Span<const float> logits, int n) {
  std::vector<float> v(logits.begin(), logits.end());
  const float lse = LogSumExp(v);
  std::vector<int32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  n = std::min<int>(n, static_cast<int>(v.size()));
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::vector<std::pair<int32_t, float>> out;
  for (int i = 0; i < n; ++i) out.emplace_back(order[i], v[order[i]] - lse);
  return out;
}

}  // namespace shardserve
