// A deliberately plain double-precision forward pass of DeepSeek-V2/V3, written from the papers'
// equations and the Hugging Face modeling code's conventions, independent of the engine:
//
//   MLA: c_q = RMSNorm(W_DQ h) (or no compression), q = W_UQ c_q split per head into q_nope and
//   q_pe; [c_kv, k_pe] = W_DKV h, c_kv = RMSNorm(c_kv); [k_nope, v] per head = W_UKV c_kv;
//   q_pe and k_pe rotated (interleaved storage: de-interleave, then rotate_half, cos/sin times
//   YaRN's mscale ratio); scores (q_nope.k_nope + q_pe.k_pe) * softmax_scale, with
//   softmax_scale = qk_head_dim^-0.5 * mscale(factor, mscale_all_dim)^2 under YaRN. Keys and
//   values are expanded per head (the non-absorbed form).
//
//   MoE: V2 softmax / V3 sigmoid scores; V3 picks groups by the sum of their two best biased
//   scores and experts by biased score, weighting by the unbiased score; V2 group-limited
//   picks groups by their best score. Weights normalised when norm_topk_prob (k > 1), scaled by
//   routed_scaling_factor (V3 always; V2 only when not normalised). y = sum_k w_k E_k(h) +
//   shared(h).
#ifndef SHARDSERVE_TESTS_MODEL_REFERENCE_DEEPSEEK_H_
#define SHARDSERVE_TESTS_MODEL_REFERENCE_DEEPSEEK_H_

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/config.h"
#include "model/weights.h"
#include "tests/model/reference_forward.h"

namespace shardserve::testing {

using Vec = std::vector<double>;

inline Vec RefLinear(const Vec& x, const Vec& w, int64_t out, int64_t in) {
  Vec y(out, 0.0);
  for (int64_t o = 0; o < out; ++o) {
    double s = 0;
    for (int64_t i = 0; i < in; ++i) s += w[o * in + i] * x[i];
    y[o] = s;
  }
  return y;
}

inline Vec RefRmsNorm(const Vec& x, const Vec& g, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = g[i] * x[i] * inv;
  return y;
}

inline Vec RefMlp(const WeightSource& w, const std::string& p, const Vec& x, int64_t H,
                  int64_t inter) {
  const Vec g = RefLinear(x, LoadDouble(w, p + "gate_proj.weight"), inter, H);
  const Vec u = RefLinear(x, LoadDouble(w, p + "up_proj.weight"), inter, H);
  Vec a(inter);
  for (int64_t i = 0; i < inter; ++i) a[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
  return RefLinear(a, LoadDouble(w, p + "down_proj.weight"), H, inter);
}

inline double RefYarnMscale(double scale, double m) {
  return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

// Indices of the k largest values, larger first, lower index first among equals.
inline std::vector<int> RefTopK(const Vec& v, int64_t k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[a] > v[b]; });
  idx.resize(k);
  return idx;
}

// Logits [tokens.size()][vocab] for every position of `tokens`.
inline std::vector<Vec> ReferenceDeepseekForward(const ModelConfig& c, const WeightSource& w,
                                                 const std::vector<int32_t>& tokens) {
  const DeepseekConfig& d = c.deepseek;
  const int64_t T = tokens.size(), H = c.hidden_size, NH = c.num_heads, nope = d.qk_nope_head_dim,
                R = d.qk_rope_head_dim, QD = nope + R, kvl = d.kv_lora_rank, vd = d.v_head_dim;
  const double eps = c.rms_norm_eps;
  // Rotary frequencies, YaRN-corrected (DeepseekYarnRotaryEmbedding).
  Vec inv_freq(R / 2);
  double cos_scale = 1.0, softmax_scale = 1.0 / std::sqrt(static_cast<double>(QD));
  for (int64_t i = 0; i < R / 2; ++i) {
    inv_freq[i] = 1.0 / std::pow(c.rope_theta, 2.0 * i / R);
  }
  if (c.rope_scaling.type == RopeScaling::Type::kYarn) {
    const RopeScaling& rs = c.rope_scaling;
    auto dim_for = [&](double rotations) {
      return R *
             std::log(rs.original_max_position_embeddings / (rotations * 2 * std::numbers::pi)) /
             (2 * std::log(c.rope_theta));
    };
    const double low = std::max(0.0, std::floor(dim_for(rs.beta_fast)));
    double high = std::min(static_cast<double>(R - 1), std::ceil(dim_for(rs.beta_slow)));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < R / 2; ++i) {
      const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      const double extra = inv_freq[i], inter = inv_freq[i] / rs.factor;
      inv_freq[i] = inter * ramp + extra * (1 - ramp);
    }
    cos_scale = RefYarnMscale(rs.factor, rs.mscale) / RefYarnMscale(rs.factor, rs.mscale_all_dim);
    if (rs.mscale_all_dim != 0) {
      const double m = RefYarnMscale(rs.factor, rs.mscale_all_dim);
      softmax_scale *= m * m;
    }
  }
  // HF apply_rotary_pos_emb for DeepSeek: de-interleave, then rotate_half.
  auto rope = [&](const double* v, int64_t pos) {
    Vec y(R), out(R);
    for (int64_t i = 0; i < R / 2; ++i) {
      y[i] = v[2 * i];
      y[i + R / 2] = v[2 * i + 1];
    }
    for (int64_t i = 0; i < R / 2; ++i) {
      const double a = pos * inv_freq[i];
      const double cs = std::cos(a) * cos_scale, sn = std::sin(a) * cos_scale;
      out[i] = y[i] * cs - y[i + R / 2] * sn;
      out[i + R / 2] = y[i + R / 2] * cs + y[i] * sn;
    }
    return out;
  };

  const Vec embed = LoadDouble(w, "model.embed_tokens.weight");
  std::vector<Vec> x(T, Vec(H));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < H; ++i) x[t][i] = embed[tokens[t] * H + i];
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const std::string a = p + "self_attn.";
    const Vec ln1 = LoadDouble(w, p + "input_layernorm.weight");
    const Vec ln2 = LoadDouble(w, p + "post_attention_layernorm.weight");
    const Vec kv_a = LoadDouble(w, a + "kv_a_proj_with_mqa.weight");
    const Vec kv_a_ln = LoadDouble(w, a + "kv_a_layernorm.weight");
    const Vec kv_b = LoadDouble(w, a + "kv_b_proj.weight");
    const Vec wo = LoadDouble(w, a + "o_proj.weight");
    // Per position and head: full query, key and value.
    std::vector<std::vector<Vec>> q(T, std::vector<Vec>(NH)), k(T, std::vector<Vec>(NH)),
        v(T, std::vector<Vec>(NH));
    for (int64_t t = 0; t < T; ++t) {
      const Vec h = RefRmsNorm(x[t], ln1, eps);
      Vec qf;
      if (d.q_lora_rank > 0) {
        const Vec cq =
            RefRmsNorm(RefLinear(h, LoadDouble(w, a + "q_a_proj.weight"), d.q_lora_rank, H),
                       LoadDouble(w, a + "q_a_layernorm.weight"), eps);
        qf = RefLinear(cq, LoadDouble(w, a + "q_b_proj.weight"), NH * QD, d.q_lora_rank);
      } else {
        qf = RefLinear(h, LoadDouble(w, a + "q_proj.weight"), NH * QD, H);
      }
      const Vec ckv_full = RefLinear(h, kv_a, kvl + R, H);
      const Vec ckv = RefRmsNorm(Vec(ckv_full.begin(), ckv_full.begin() + kvl), kv_a_ln, eps);
      const Vec k_pe = rope(ckv_full.data() + kvl, t);
      const Vec kvf = RefLinear(ckv, kv_b, NH * (nope + vd), kvl);
      for (int64_t hd = 0; hd < NH; ++hd) {
        Vec qh(qf.begin() + hd * QD, qf.begin() + hd * QD + nope);
        const Vec q_pe = rope(qf.data() + hd * QD + nope, t);
        qh.insert(qh.end(), q_pe.begin(), q_pe.end());
        q[t][hd] = qh;
        const double* kvh = kvf.data() + hd * (nope + vd);
        Vec kh(kvh, kvh + nope);
        kh.insert(kh.end(), k_pe.begin(), k_pe.end());
        k[t][hd] = kh;
        v[t][hd] = Vec(kvh + nope, kvh + nope + vd);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec attn(NH * vd, 0.0);
      for (int64_t hd = 0; hd < NH; ++hd) {
        Vec s(t + 1);
        double mx = -1e300;
        for (int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < QD; ++i) dot += q[t][hd][i] * k[u][hd][i];
          s[u] = dot * softmax_scale;
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int64_t i = 0; i < vd; ++i) attn[hd * vd + i] += s[u] / z * v[u][hd][i];
        }
      }
      const Vec o = RefLinear(attn, wo, H, NH * vd);
      for (int64_t i = 0; i < H; ++i) x[t][i] += o[i];
    }
    for (int64_t t = 0; t < T; ++t) {
      const Vec h = RefRmsNorm(x[t], ln2, eps);
      Vec y(H, 0.0);
      if (!d.IsMoeLayer(l)) {
        y = RefMlp(w, p + "mlp.", h, H, c.intermediate_size);
      } else {
        const int64_t E = d.n_routed_experts, K = d.num_experts_per_tok;
        const Vec logits = RefLinear(h, LoadDouble(w, p + "mlp.gate.weight"), E, H);
        Vec scores(E);
        if (d.scoring == DeepseekConfig::Scoring::kSigmoid) {
          for (int64_t e = 0; e < E; ++e) scores[e] = 1 / (1 + std::exp(-logits[e]));
        } else {
          const double mx = *std::max_element(logits.begin(), logits.end());
          double z = 0;
          for (int64_t e = 0; e < E; ++e) z += (scores[e] = std::exp(logits[e] - mx));
          for (double& s : scores) s /= z;
        }
        Vec choice = scores;
        if (d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc) {
          const Vec bias = LoadDouble(w, p + "mlp.gate.e_score_correction_bias");
          for (int64_t e = 0; e < E; ++e) choice[e] += bias[e];
        }
        if (d.topk_method != DeepseekConfig::TopkMethod::kGreedy) {
          const int64_t per = E / d.n_group;
          Vec group_score(d.n_group);
          for (int64_t g = 0; g < d.n_group; ++g) {
            const Vec members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
            const auto best = RefTopK(members, 2);
            group_score[g] = d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc
                                 ? members[best[0]] + members[best[1]]
                                 : members[best[0]];
          }
          const auto groups = RefTopK(group_score, d.topk_group);
          for (int64_t e = 0; e < E; ++e) {
            if (std::find(groups.begin(), groups.end(), e / per) == groups.end()) {
              choice[e] = -INFINITY;
            }
          }
        }
        const auto chosen = RefTopK(choice, K);
        Vec weight(K);
        double sum = 0;
        for (int64_t j = 0; j < K; ++j) sum += (weight[j] = scores[chosen[j]]);
        const bool normalize = K > 1 && d.norm_topk_prob;
        for (double& wt : weight) {
          if (normalize) wt /= sum + 1e-20;
          if (c.architecture == Architecture::kDeepseekV3 || !normalize) {
            wt *= d.routed_scaling_factor;
          }
        }
        for (int64_t j = 0; j < K; ++j) {
          const Vec ye = RefMlp(w, absl::StrCat(p, "mlp.experts.", chosen[j], "."), h, H,
                                d.moe_intermediate_size);
          for (int64_t i = 0; i < H; ++i) y[i] += weight[j] * ye[i];
        }
        if (d.n_shared_experts > 0) {
          const Vec ys = RefMlp(w, p + "mlp.shared_experts.", h, H,
                                d.moe_intermediate_size * d.n_shared_experts);
          for (int64_t i = 0; i < H; ++i) y[i] += ys[i];
        }
      }
      for (int64_t i = 0; i < H; ++i) x[t][i] += y[i];
    }
  }
  const Vec norm = LoadDouble(w, "model.norm.weight");
  const Vec head = w.Has("lm_head.weight") ? LoadDouble(w, "lm_head.weight") : embed;
  std::vector<Vec> logits;
  for (int64_t t = 0; t < T; ++t) {
    logits.push_back(RefLinear(RefRmsNorm(x[t], norm, eps), head, c.vocab_size, H));
  }
  return logits;
}

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_MODEL_REFERENCE_DEEPSEEK_H_
