// A deliberately plain double-precision forward pass of the Llama family, written from the
// Hugging Face modeling code's semantics (rotate_half RoPE, repeat_kv GQA, RMSNorm in the
// weight's frame, SiLU-gated MLP, optional q/k/v biases), independent of the engine's kernels.
// Tests compare the engine's logits against it on synthetic models of every supported variant.
#ifndef SHARDSERVE_TESTS_MODEL_REFERENCE_FORWARD_H_
#define SHARDSERVE_TESTS_MODEL_REFERENCE_FORWARD_H_

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/config.h"
#include "model/weights.h"

namespace shardserve::testing {

inline std::vector<double> LoadDouble(const WeightSource& w, const std::string& name) {
  auto t = w.Get(name);
  if (!t.ok()) return {};
  std::vector<double> out(t->numel());
  const auto* p = static_cast<const uint8_t*>(t->data);
  for (size_t i = 0; i < out.size(); ++i) {
    if (t->dtype == DType::kF32) {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      out[i] = f;
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = t->dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
    }
  }
  return out;
}

// Logits [tokens.size()][vocab] for every position of `tokens`.
inline std::vector<std::vector<double>> ReferenceForward(const ModelConfig& c,
                                                         const WeightSource& w,
                                                         const std::vector<int32_t>& tokens) {
  const int64_t T = tokens.size(), H = c.hidden_size, D = c.head_dim, NH = c.num_heads,
                KV = c.num_kv_heads, I = c.intermediate_size;
  auto linear = [](const std::vector<double>& x, const std::vector<double>& wt, int64_t out,
                   int64_t in, const std::vector<double>* bias) {
    std::vector<double> y(out);
    for (int64_t o = 0; o < out; ++o) {
      double s = bias && !bias->empty() ? (*bias)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += wt[o * in + i] * x[i];
      y[o] = s;
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const std::vector<double>& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.rms_norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = g[i] * x[i] * inv;
    return y;
  };
  const std::vector<float> inv_freq = c.RopeInvFreq();
  auto rope = [&](std::vector<double>& v, int64_t heads, int64_t pos) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < D / 2; ++i) {
        const double ang = pos * static_cast<double>(inv_freq[i]);
        const double a = v[h * D + i], b = v[h * D + i + D / 2];
        v[h * D + i] = a * std::cos(ang) - b * std::sin(ang);
        v[h * D + i + D / 2] = b * std::cos(ang) + a * std::sin(ang);
      }
    }
  };
  const auto embed = LoadDouble(w, "model.embed_tokens.weight");
  std::vector<std::vector<double>> x(T, std::vector<double>(H));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < H; ++i) x[t][i] = embed[tokens[t] * H + i];
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const auto ln1 = LoadDouble(w, p + "input_layernorm.weight");
    const auto ln2 = LoadDouble(w, p + "post_attention_layernorm.weight");
    const auto wq = LoadDouble(w, p + "self_attn.q_proj.weight");
    const auto wk = LoadDouble(w, p + "self_attn.k_proj.weight");
    const auto wv = LoadDouble(w, p + "self_attn.v_proj.weight");
    const auto wo = LoadDouble(w, p + "self_attn.o_proj.weight");
    const auto bq = LoadDouble(w, p + "self_attn.q_proj.bias");
    const auto bk = LoadDouble(w, p + "self_attn.k_proj.bias");
    const auto bv = LoadDouble(w, p + "self_attn.v_proj.bias");
    const auto wg = LoadDouble(w, p + "mlp.gate_proj.weight");
    const auto wu = LoadDouble(w, p + "mlp.up_proj.weight");
    const auto wd = LoadDouble(w, p + "mlp.down_proj.weight");
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (int64_t t = 0; t < T; ++t) {
      const auto h = rmsnorm(x[t], ln1);
      q[t] = linear(h, wq, NH * D, H, &bq);
      k[t] = linear(h, wk, KV * D, H, &bk);
      v[t] = linear(h, wv, KV * D, H, &bv);
      rope(q[t], NH, t);
      rope(k[t], KV, t);
    }
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> attn(NH * D, 0.0);
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t g = h / (NH / KV);
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int64_t u = 0; u <= t; ++u) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[t][h * D + i] * k[u][g * D + i];
          s[u] = d / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int64_t i = 0; i < D; ++i) attn[h * D + i] += s[u] / z * v[u][g * D + i];
        }
      }
      const auto o = linear(attn, wo, H, NH * D, nullptr);
      for (int64_t i = 0; i < H; ++i) x[t][i] += o[i];
      const auto h2 = rmsnorm(x[t], ln2);
      const auto gate = linear(h2, wg, I, H, nullptr);
      const auto up = linear(h2, wu, I, H, nullptr);
      std::vector<double> act(I);
      for (int64_t i = 0; i < I; ++i) act[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      const auto down = linear(act, wd, H, I, nullptr);
      for (int64_t i = 0; i < H; ++i) x[t][i] += down[i];
    }
  }
  const auto norm = LoadDouble(w, "model.norm.weight");
  const auto head = w.Has("lm_head.weight") ? LoadDouble(w, "lm_head.weight") : embed;
  std::vector<std::vector<double>> logits;
  for (int64_t t = 0; t < T; ++t)
    logits.push_back(linear(rmsnorm(x[t], norm), head, c.vocab_size, H, nullptr));
  return logits;
}

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_MODEL_REFERENCE_FORWARD_H_
