#include "model/deepseek.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/quant_format.h"
#include "model/stage_step.h"

namespace shardserve {
namespace {

using Weight = StageWeight;

struct FfnWeights {
  Weight gate, up, down;
};

struct LayerWeights {
  Weight input_norm, post_norm;
  // Query: q_a -> q_a_norm -> q_b, or q alone. Output rows are reordered to
  // [heads * nope | heads * rope], the rotary part de-interleaved and scaled by YaRN's mscale^2.
  Weight q_a, q_a_norm, q_b, q;
  // kv_a_proj_with_mqa: [latent | rotary key], the rotary part de-interleaved.
  Weight kv_a, kv_a_norm;
  Weight uk_t;  // [heads * kv_lora_rank, nope]: the key half of kv_b_proj, transposed per head
  Weight kv_b;  // as stored: per head nope key rows, then v_head_dim value rows
  Weight o;
  bool moe = false;
  FfnWeights dense;  // dense layers
  Weight router;     // [n_routed_experts, hidden]
  std::vector<float> score_bias;
  std::vector<FfnWeights> experts;
  FfnWeights shared;
  bool has_shared = false;
};

struct Workspace {
  int64_t capacity = 0;
  std::unique_ptr<Buffer> x, h, qa, q, kv, q_lat, lat_out, attn, gate_up, act, logits_router, xe,
      ye, moe;
  LogitsBuffer logits;  // [rows, vocab], copied out by Forward
};

// Row i of the de-interleaved order holds stored row 2i (first half) or 2(i - dim/2) + 1.
int64_t DeinterleavedSource(int64_t i, int64_t dim) {
  return i < dim / 2 ? 2 * i : 2 * (i - dim / 2) + 1;
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

class DeepseekStage : public DecoderStageBase {
 public:
  DeepseekStage(const ModelConfig& c, std::unique_ptr<WeightSource> weights, const StageSpec& spec,
                const KvCacheSpec& kv, Backend* backend)
      : DecoderStageBase(c, std::move(weights), spec, kv, backend), pool_(0) {
    const DeepseekConfig& d = c.deepseek;
    inv_freq_ = c.RopeInvFreq(d.qk_rope_head_dim);
    double scale = 1.0 / std::sqrt(static_cast<double>(d.qk_nope_head_dim + d.qk_rope_head_dim));
    rope_mscale_ = 1.0;
    if (c.rope_scaling.type == RopeScaling::Type::kYarn) {
      const double all_dim = YarnMscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
      if (c.rope_scaling.mscale_all_dim != 0) scale *= all_dim * all_dim;
      rope_mscale_ = YarnMscale(c.rope_scaling.factor, c.rope_scaling.mscale) / all_dim;
    }
    softmax_scale_ = static_cast<float>(scale);
  }

  absl::Status Load() {
    const ModelConfig& c = config_;
    const DeepseekConfig& d = c.deepseek;
    RETURN_IF_ERROR(CheckSpec());
    const int64_t H = c.hidden_size, NH = c.num_heads, nope = d.qk_nope_head_dim,
                  R = d.qk_rope_head_dim, QD = nope + R, kvl = d.kv_lora_rank, vd = d.v_head_dim;
    if (is_first()) {
      ASSIGN_OR_RETURN(embed_, Matrix("model.embed_tokens.weight", c.vocab_size, H, false));
    }
    // Query rows: [heads * nope | heads * rope]; the rotary rows de-interleaved and scaled.
    const float q_rope_scale = static_cast<float>(rope_mscale_ * rope_mscale_);
    auto reorder_q = [&](std::vector<float>& m, int64_t cols) {
      std::vector<float> out(m.size());
      for (int64_t h = 0; h < NH; ++h) {
        for (int64_t i = 0; i < nope; ++i) {
          std::memcpy(&out[(h * nope + i) * cols], &m[(h * QD + i) * cols], cols * sizeof(float));
        }
        for (int64_t i = 0; i < R; ++i) {
          float* dst = &out[(NH * nope + h * R + i) * cols];
          const float* src = &m[(h * QD + nope + DeinterleavedSource(i, R)) * cols];
          for (int64_t j = 0; j < cols; ++j) dst[j] = src[j] * q_rope_scale;
        }
      }
      m.swap(out);
    };
    auto reorder_kv_a = [&](std::vector<float>& m, int64_t cols) {
      std::vector<float> rope(R * cols);
      for (int64_t i = 0; i < R; ++i) {
        std::memcpy(&rope[i * cols], &m[(kvl + DeinterleavedSource(i, R)) * cols],
                    cols * sizeof(float));
      }
      std::memcpy(&m[kvl * cols], rope.data(), rope.size() * sizeof(float));
    };
    for (int64_t l = begin_; l < end_; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      const std::string a = p + "self_attn.";
      LayerWeights w;
      ASSIGN_OR_RETURN(w.input_norm, Vector(p + "input_layernorm.weight", H));
      ASSIGN_OR_RETURN(w.post_norm, Vector(p + "post_attention_layernorm.weight", H));
      if (d.q_lora_rank > 0) {
        ASSIGN_OR_RETURN(w.q_a, Matrix(a + "q_a_proj.weight", d.q_lora_rank, H));
        ASSIGN_OR_RETURN(w.q_a_norm, Vector(a + "q_a_layernorm.weight", d.q_lora_rank));
        ASSIGN_OR_RETURN(w.q_b,
                         Matrix(a + "q_b_proj.weight", NH * QD, d.q_lora_rank, true, reorder_q));
      } else {
        ASSIGN_OR_RETURN(w.q, Matrix(a + "q_proj.weight", NH * QD, H, true, reorder_q));
      }
      ASSIGN_OR_RETURN(w.kv_a,
                       Matrix(a + "kv_a_proj_with_mqa.weight", kvl + R, H, true, reorder_kv_a));
      ASSIGN_OR_RETURN(w.kv_a_norm, Vector(a + "kv_a_layernorm.weight", kvl));
      ASSIGN_OR_RETURN(w.kv_b, Matrix(a + "kv_b_proj.weight", NH * (nope + vd), kvl, false));
      // W_UK^T per head: uk_t[h * kvl + j, i] = kv_b[h * (nope + vd) + i, j].
      ASSIGN_OR_RETURN(w.uk_t, Matrix(
                                   a + "kv_b_proj.weight", NH * (nope + vd), kvl, false,
                                   [&](std::vector<float>& m, int64_t cols) {
                                     std::vector<float> t(NH * kvl * nope);
                                     for (int64_t h = 0; h < NH; ++h) {
                                       for (int64_t i = 0; i < nope; ++i) {
                                         for (int64_t j = 0; j < kvl; ++j) {
                                           t[(h * kvl + j) * nope + i] =
                                               m[(h * (nope + vd) + i) * cols + j];
                                         }
                                       }
                                     }
                                     m.swap(t);
                                   },
                                   NH * kvl, nope));
      ASSIGN_OR_RETURN(w.o, Matrix(a + "o_proj.weight", H, NH * vd));
      w.moe = d.IsMoeLayer(l);
      if (!w.moe) {
        ASSIGN_OR_RETURN(w.dense, Ffn(p + "mlp.", c.intermediate_size));
      } else {
        const int64_t E = d.n_routed_experts;
        ASSIGN_OR_RETURN(w.router, Matrix(p + "mlp.gate.weight", E, H, false));
        if (d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc) {
          ASSIGN_OR_RETURN(w.score_bias, HostVector(p + "mlp.gate.e_score_correction_bias", E));
        }
        for (int64_t e = 0; e < E; ++e) {
          ASSIGN_OR_RETURN(FfnWeights f,
                           Ffn(absl::StrCat(p, "mlp.experts.", e, "."), d.moe_intermediate_size));
          w.experts.push_back(std::move(f));
        }
        if (d.n_shared_experts > 0) {
          w.has_shared = true;
          ASSIGN_OR_RETURN(w.shared, Ffn(p + "mlp.shared_experts.",
                                         d.moe_intermediate_size * d.n_shared_experts));
        }
      }
      layers_.push_back(std::move(w));
    }
    if (is_last()) {
      RETURN_IF_ERROR(LoadHead([this](const std::string& name, int64_t rows, int64_t cols) {
        return Matrix(name, rows, cols);
      }));
    }
    RETURN_IF_ERROR(ResolveKvSpec(c, &kv_));
    const size_t layer_values =
        static_cast<size_t>(kv_.num_blocks * kv_.block_size) * MlaCacheValuesPerToken(c);
    latent_cache_.assign(end_ - begin_, std::vector<float>(layer_values, 0.0f));
    return absl::OkStatus();
  }

  absl::StatusOr<StepBuffers> PrepareStep(int64_t total) override {
    RETURN_IF_ERROR(Reserve(total));
    return BuffersOf(ws_);
  }

  absl::Status RunLayers(Tensor x, int64_t total, const StepRows& rows) override {
    for (size_t l = 0; l < layers_.size(); ++l) {
      RETURN_IF_ERROR(RunAttention(l, x, total, rows.positions, rows.seqs));
      RETURN_IF_ERROR(RunFfn(l, x, total));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status RunAttention(size_t l, Tensor x, int64_t total,
                            const std::vector<int32_t>& positions,
                            const std::vector<AttentionSeq>& seqs) {
    const ModelConfig& c = config_;
    const DeepseekConfig& d = c.deepseek;
    const LayerWeights& w = layers_[l];
    const int64_t H = c.hidden_size, NH = c.num_heads, nope = d.qk_nope_head_dim,
                  R = d.qk_rope_head_dim, QD = nope + R, kvl = d.kv_lora_rank, vd = d.v_head_dim;
    const float eps = static_cast<float>(c.rms_norm_eps);
    Tensor h = Tensor::Of(ws_.h->data(), DType::kF32, total, H);
    Tensor q = Tensor::Of(ws_.q->data(), DType::kF32, total, NH * QD);
    Tensor kv = Tensor::Of(ws_.kv->data(), DType::kF32, total, kvl + R);
    Tensor q_lat = Tensor::Of(ws_.q_lat->data(), DType::kF32, total, NH * kvl);
    Tensor lat_out = Tensor::Of(ws_.lat_out->data(), DType::kF32, total, NH * kvl);
    Tensor attn = Tensor::Of(ws_.attn->data(), DType::kF32, total, NH * vd);

    backend_->RmsNorm(x, w.input_norm.t, eps, h);
    if (d.q_lora_rank > 0) {
      Tensor qa = Tensor::Of(ws_.qa->data(), DType::kF32, total, d.q_lora_rank);
      backend_->MatMul(h, w.q_a.t, nullptr, qa);
      backend_->RmsNorm(qa, w.q_a_norm.t, eps, qa);
      backend_->MatMul(qa, w.q_b.t, nullptr, q);
    } else {
      backend_->MatMul(h, w.q.t, nullptr, q);
    }
    backend_->MatMul(h, w.kv_a.t, nullptr, kv);
    Tensor latent{kv.data, DType::kF32, total, kvl, kvl + R};
    backend_->RmsNorm(latent, w.kv_a_norm.t, eps, latent);
    Tensor q_pe{q.f32() + NH * nope, DType::kF32, total, NH * R, NH * QD};
    Tensor k_pe{kv.f32() + kvl, DType::kF32, total, R, kvl + R};
    backend_->Rope(q_pe, R, positions, inv_freq_);
    backend_->Rope(k_pe, R, positions, inv_freq_);
    // Absorb W_UK into the query: q_lat[h] = W_UK[h]^T q_nope[h].
    for (int64_t hd = 0; hd < NH; ++hd) {
      Tensor q_nope{q.f32() + hd * nope, DType::kF32, total, nope, NH * QD};
      Tensor dst{q_lat.f32() + hd * kvl, DType::kF32, total, kvl, NH * kvl};
      backend_->MatMul(q_nope, w.uk_t.t.Rows(hd * kvl, kvl), nullptr, dst);
    }
    // Latent attention on the host.
    host_q_lat_.resize(static_cast<size_t>(total * NH * kvl));
    host_q_.resize(static_cast<size_t>(total * NH * QD));
    host_kv_.resize(static_cast<size_t>(total * (kvl + R)));
    host_lat_out_.resize(static_cast<size_t>(total * NH * kvl));
    RETURN_IF_ERROR(
        backend_->CopyToHost(host_q_lat_.data(), q_lat.data, host_q_lat_.size() * sizeof(float)));
    RETURN_IF_ERROR(backend_->CopyToHost(host_q_.data(), q.data, host_q_.size() * sizeof(float)));
    RETURN_IF_ERROR(
        backend_->CopyToHost(host_kv_.data(), kv.data, host_kv_.size() * sizeof(float)));
    MlaAttentionShape shape{NH, kvl, R, kv_.block_size, kv_.num_blocks, softmax_scale_};
    MlaAttentionHost(host_q_lat_.data(), host_q_.data() + NH * nope, NH * QD, host_kv_.data(),
                     kvl + R, seqs, shape, latent_cache_[l].data(), host_lat_out_.data(), &pool_);
    backend_->CopyToDevice(lat_out.data, host_lat_out_.data(),
                           host_lat_out_.size() * sizeof(float));
    // Values: attn[h] = W_UV[h] lat_out[h].
    for (int64_t hd = 0; hd < NH; ++hd) {
      Tensor src{lat_out.f32() + hd * kvl, DType::kF32, total, kvl, NH * kvl};
      Tensor dst{attn.f32() + hd * vd, DType::kF32, total, vd, NH * vd};
      backend_->MatMul(src, w.kv_b.t.Rows(hd * (nope + vd) + nope, vd), nullptr, dst);
    }
    backend_->MatMul(attn, w.o.t, nullptr, h);
    backend_->Add(x, h);
    return absl::OkStatus();
  }

  // out = down(silu(gate(in)) * up(in)) over in's rows.
  void RunMlp(const FfnWeights& f, const Tensor& in, Tensor out) {
    const int64_t rows = in.rows, inter = f.gate.t.rows;
    Tensor gate_up = Tensor::Of(ws_.gate_up->data(), DType::kF32, rows, 2 * inter);
    Tensor act = Tensor::Of(ws_.act->data(), DType::kF32, rows, inter);
    Tensor gate_half{gate_up.data, DType::kF32, rows, inter, 2 * inter};
    Tensor up_half{gate_up.f32() + inter, DType::kF32, rows, inter, 2 * inter};
    backend_->MatMul(in, f.gate.t, nullptr, gate_half);
    backend_->MatMul(in, f.up.t, nullptr, up_half);
    backend_->SwiGlu(gate_up, act);
    backend_->MatMul(act, f.down.t, nullptr, out);
  }

  absl::Status RunFfn(size_t l, Tensor x, int64_t total) {
    const ModelConfig& c = config_;
    const DeepseekConfig& d = c.deepseek;
    const LayerWeights& w = layers_[l];
    const int64_t H = c.hidden_size;
    Tensor h = Tensor::Of(ws_.h->data(), DType::kF32, total, H);
    Tensor y = Tensor::Of(ws_.ye->data(), DType::kF32, total, H);
    backend_->RmsNorm(x, w.post_norm.t, static_cast<float>(c.rms_norm_eps), h);
    if (!w.moe) {
      RunMlp(w.dense, h, y);
      backend_->Add(x, y);
      return absl::OkStatus();
    }
    const int64_t E = d.n_routed_experts;
    Tensor router_logits = Tensor::Of(ws_.logits_router->data(), DType::kF32, total, E);
    backend_->MatMul(h, w.router.t, nullptr, router_logits);
    host_router_.resize(static_cast<size_t>(total * E));
    RETURN_IF_ERROR(backend_->CopyToHost(host_router_.data(), router_logits.data,
                                         host_router_.size() * sizeof(float)));
    const ExpertRouting routing = RouteTokens(c, host_router_.data(), total, w.score_bias);
    // Group (token, weight) pairs by expert.
    std::vector<std::vector<std::pair<int64_t, float>>> by_expert(E);
    for (int64_t t = 0; t < total; ++t) {
      for (int64_t j = 0; j < routing.top_k; ++j) {
        const size_t i = static_cast<size_t>(t * routing.top_k + j);
        by_expert[routing.experts[i]].emplace_back(t, routing.weights[i]);
      }
    }
    host_moe_.assign(static_cast<size_t>(total * H), 0.0f);
    host_expert_out_.resize(static_cast<size_t>(total * H));
    Tensor xe_all = Tensor::Of(ws_.xe->data(), DType::kF32, total, H);
    for (int64_t e = 0; e < E; ++e) {
      const auto& tokens = by_expert[e];
      if (tokens.empty()) continue;
      const int64_t n = static_cast<int64_t>(tokens.size());
      Tensor xe = xe_all.Rows(0, n);
      for (int64_t i = 0; i < n; ++i) {
        backend_->CopyOnDevice(xe.row(i), h.row(tokens[i].first), H * sizeof(float));
      }
      Tensor ye = y.Rows(0, n);
      RunMlp(w.experts[e], xe, ye);
      RETURN_IF_ERROR(backend_->CopyToHost(host_expert_out_.data(), ye.data,
                                           static_cast<size_t>(n * H) * sizeof(float)));
      for (int64_t i = 0; i < n; ++i) {
        float* dst = &host_moe_[tokens[i].first * H];
        const float* src = &host_expert_out_[i * H];
        const float g = tokens[i].second;
        for (int64_t k = 0; k < H; ++k) dst[k] += g * src[k];
      }
    }
    Tensor moe = Tensor::Of(ws_.moe->data(), DType::kF32, total, H);
    backend_->CopyToDevice(moe.data, host_moe_.data(), host_moe_.size() * sizeof(float));
    if (w.has_shared) {
      RunMlp(w.shared, h, y);
      backend_->Add(moe, y);
    }
    backend_->Add(x, moe);
    return absl::OkStatus();
  }

  absl::Status Reserve(int64_t total) {
    if (total <= ws_.capacity) return absl::OkStatus();
    const ModelConfig& c = config_;
    const DeepseekConfig& d = c.deepseek;
    const int64_t cap = std::max<int64_t>(total, 16);
    const int64_t NH = c.num_heads;
    int64_t inter = c.intermediate_size;
    if (d.n_routed_experts > 0) {
      inter = std::max({inter, d.moe_intermediate_size,
                        d.moe_intermediate_size * std::max<int64_t>(d.n_shared_experts, 1)});
    }
    auto alloc = [&](std::unique_ptr<Buffer>* b, int64_t cols) -> absl::Status {
      ASSIGN_OR_RETURN(*b, backend_->Allocate(static_cast<size_t>(cap * cols) * sizeof(float)));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(alloc(&ws_.x, c.hidden_size));
    RETURN_IF_ERROR(alloc(&ws_.h, c.hidden_size));
    RETURN_IF_ERROR(alloc(&ws_.qa, std::max<int64_t>(d.q_lora_rank, 1)));
    RETURN_IF_ERROR(alloc(&ws_.q, NH * (d.qk_nope_head_dim + d.qk_rope_head_dim)));
    RETURN_IF_ERROR(alloc(&ws_.kv, d.kv_lora_rank + d.qk_rope_head_dim));
    RETURN_IF_ERROR(alloc(&ws_.q_lat, NH * d.kv_lora_rank));
    RETURN_IF_ERROR(alloc(&ws_.lat_out, NH * d.kv_lora_rank));
    RETURN_IF_ERROR(alloc(&ws_.attn, NH * d.v_head_dim));
    RETURN_IF_ERROR(alloc(&ws_.gate_up, 2 * inter));
    RETURN_IF_ERROR(alloc(&ws_.act, inter));
    RETURN_IF_ERROR(alloc(&ws_.logits_router, std::max<int64_t>(d.n_routed_experts, 1)));
    RETURN_IF_ERROR(alloc(&ws_.xe, c.hidden_size));
    RETURN_IF_ERROR(alloc(&ws_.ye, c.hidden_size));
    RETURN_IF_ERROR(alloc(&ws_.moe, c.hidden_size));
    ws_.capacity = cap;
    return absl::OkStatus();
  }

  absl::StatusOr<TensorRef> Get(const std::string& name, int64_t rows, int64_t cols) const {
    ASSIGN_OR_RETURN(TensorRef t, weights_->GetWithShape(name, {rows, cols}));
    if (t.dtype != config_.dtype && !config_.mixed_dtypes) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is ", DTypeName(t.dtype),
                                                     " but config.json says torch_dtype ",
                                                     DTypeName(config_.dtype)));
    }
    if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is ", DTypeName(t.dtype), " (expected F32/F16/BF16)"));
    }
    return t;
  }

  // A [rows, cols] matrix, used in place, or quantized at load with `quantize` (rows of a
  // multiple of 32 values), or rewritten on the host by `edit` (which gets the matrix as F32
  // and may change its shape to [out_rows, out_cols]); the result keeps the stored dtype unless
  // quantized.
  using Edit = std::function<void(std::vector<float>&, int64_t cols)>;
  absl::StatusOr<Weight> Matrix(const std::string& name, int64_t rows, int64_t cols,
                                bool quantize = true, const Edit& edit = nullptr,
                                int64_t out_rows = -1, int64_t out_cols = -1) {
    ASSIGN_OR_RETURN(TensorRef t, Get(name, rows, cols));
    const bool quant = quantize && quantize_ != DType::kF32;
    if (!edit && !(quant && cols % 32 == 0)) {
      Weight w;
      if (quantize) {
        ASSIGN_OR_RETURN(bool packed, PackFromHost(backend_, t.data, t.dtype, rows, cols, &w));
        if (packed) return w;
      }
      ASSIGN_OR_RETURN(w.buffer, backend_->UploadWeights(t.data, t.nbytes));
      w.t = Tensor::Of(w.buffer->data(), t.dtype, rows, cols);
      return w;
    }
    std::vector<float> m(static_cast<size_t>(rows * cols));
    const auto* src = static_cast<const uint8_t*>(t.data);
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeRow(t.dtype, src + RowBytes(t.dtype, cols) * r, cols, &m[r * cols]);
    }
    if (edit) edit(m, cols);
    if (out_rows >= 0) {
      rows = out_rows;
      cols = out_cols;
    }
    const DType dt = quant && cols % 32 == 0 ? quantize_ : t.dtype;
    const size_t row_bytes = RowBytes(dt, cols);
    std::vector<uint8_t> host(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = &m[r * cols];
      uint8_t* dst = host.data() + row_bytes * r;
      if (IsQuantized(dt)) {
        QuantizeRow(dt, row, cols, dst);
      } else if (dt == DType::kF32) {
        std::memcpy(dst, row, cols * sizeof(float));
      } else {
        for (int64_t i = 0; i < cols; ++i) {
          const uint16_t v = dt == DType::kF16 ? F32ToF16(row[i]) : F32ToBf16(row[i]);
          std::memcpy(dst + 2 * i, &v, 2);
        }
      }
    }
    Weight w;
    ASSIGN_OR_RETURN(w.buffer, backend_->Allocate(host.size()));
    backend_->CopyToDevice(w.buffer->data(), host.data(), host.size());
    w.t = Tensor::Of(w.buffer->data(), dt, rows, cols);
    if (quantize) RETURN_IF_ERROR(PackForMatMul(backend_, &w));
    return w;
  }

  absl::StatusOr<std::vector<float>> HostVector(const std::string& name, int64_t n) const {
    return weights_->GetVectorF32(name, n);
  }

  absl::StatusOr<FfnWeights> Ffn(const std::string& prefix, int64_t inter) {
    const int64_t H = config_.hidden_size;
    FfnWeights f;
    ASSIGN_OR_RETURN(f.gate, Matrix(prefix + "gate_proj.weight", inter, H));
    ASSIGN_OR_RETURN(f.up, Matrix(prefix + "up_proj.weight", inter, H));
    ASSIGN_OR_RETURN(f.down, Matrix(prefix + "down_proj.weight", H, inter));
    return f;
  }

  ThreadPool pool_;  // for the host kernels
  std::vector<float> inv_freq_;
  double rope_mscale_ = 1.0;
  float softmax_scale_ = 1.0f;
  std::vector<LayerWeights> layers_;
  // Per layer: [num_blocks * block_size, kv_lora_rank + qk_rope_head_dim].
  std::vector<std::vector<float>> latent_cache_;
  Workspace ws_;
  // Host staging for the host kernels.
  std::vector<float> host_q_lat_, host_q_, host_kv_, host_lat_out_, host_router_, host_moe_,
      host_expert_out_;
};

}  // namespace

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

ExpertRouting RouteTokens(const ModelConfig& config, const float* logits, int64_t tokens,
                          absl::Span<const float> score_bias) {
  const DeepseekConfig& d = config.deepseek;
  const int64_t E = d.n_routed_experts, K = d.num_experts_per_tok;
  ExpertRouting out;
  out.top_k = K;
  out.experts.resize(static_cast<size_t>(tokens * K));
  out.weights.resize(static_cast<size_t>(tokens * K));
  std::vector<float> scores(E), choice(E);
  std::vector<int32_t> order(E), groups(d.n_group);
  std::vector<float> group_score(d.n_group);
  constexpr float kExcluded = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* z = logits + t * E;
    if (d.scoring == DeepseekConfig::Scoring::kSigmoid) {
      for (int64_t e = 0; e < E; ++e) scores[e] = Sigmoid(z[e]);
    } else {
      const float mx = *std::max_element(z, z + E);
      float sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += (scores[e] = std::exp(z[e] - mx));
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    }
    for (int64_t e = 0; e < E; ++e) {
      choice[e] = scores[e] + (score_bias.empty() ? 0.0f : score_bias[e]);
    }
    if (d.topk_method != DeepseekConfig::TopkMethod::kGreedy) {
      const int64_t per = E / d.n_group;
      for (int64_t g = 0; g < d.n_group; ++g) {
        std::vector<float> v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
        std::sort(v.begin(), v.end(), std::greater<float>());
        group_score[g] = d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc ? v[0] + v[1] : v[0];
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::stable_sort(groups.begin(), groups.end(),
                       [&](int32_t a, int32_t b) { return group_score[a] > group_score[b]; });
      std::vector<bool> keep(d.n_group, false);
      for (int64_t g = 0; g < d.topk_group; ++g) keep[groups[g]] = true;
      for (int64_t e = 0; e < E; ++e) {
        if (!keep[e / per]) choice[e] = kExcluded;
      }
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t a, int32_t b) {
      return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
    });
    float sum = 0;
    for (int64_t j = 0; j < K; ++j) sum += scores[order[j]];
    const bool normalize = K > 1 && d.norm_topk_prob;
    for (int64_t j = 0; j < K; ++j) {
      float w = scores[order[j]];
      if (normalize) w /= sum + 1e-20f;
      // V3 scales always; V2 only weights it did not normalize.
      if (config.architecture == Architecture::kDeepseekV3 || !normalize) {
        w *= static_cast<float>(d.routed_scaling_factor);
      }
      out.experts[t * K + j] = order[j];
      out.weights[t * K + j] = w;
    }
  }
  return out;
}

void MlaAttentionHost(const float* q_lat, const float* q_pe, int64_t q_pe_stride,
                      const float* latent, int64_t latent_stride,
                      absl::Span<const AttentionSeq> seqs, const MlaAttentionShape& shape,
                      float* cache, float* out, ThreadPool* pool) {
  const int64_t kvl = shape.kv_lora_rank, R = shape.rope_dim, width = kvl + R, NH = shape.num_heads;
  auto slot_of = [&](const AttentionSeq& s, int64_t pos) {
    return static_cast<int64_t>(s.block_table[pos / shape.block_size]) * shape.block_size +
           pos % shape.block_size;
  };
  for (const AttentionSeq& s : seqs) {
    for (int64_t t = 0; t < s.num_tokens; ++t) {
      std::memcpy(cache + slot_of(s, s.start_pos + t) * width,
                  latent + (s.row_begin + t) * latent_stride, width * sizeof(float));
    }
  }
  std::vector<std::pair<const AttentionSeq*, int64_t>> rows;
  int64_t max_len = 0;
  for (const AttentionSeq& s : seqs) {
    for (int64_t t = 0; t < s.num_tokens; ++t) rows.emplace_back(&s, t);
    max_len = std::max(max_len, s.start_pos + s.num_tokens);
  }
  const int64_t items = static_cast<int64_t>(rows.size()) * NH;
  pool->ParallelFor(
      items, 1,
      [&](int64_t i0, int64_t i1) {
        std::vector<float> scores(max_len);
        std::vector<const float*> keys(max_len);
        for (int64_t item = i0; item < i1; ++item) {
          const auto [seq, t] = rows[item / NH];
          const int64_t h = item % NH;
          const int64_t row = seq->row_begin + t;
          const int64_t len = seq->start_pos + t + 1;
          const float* ql = q_lat + row * NH * kvl + h * kvl;
          const float* qr = q_pe + row * q_pe_stride + h * R;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t u = 0; u < len; ++u) {
            const float* c = cache + slot_of(*seq, u) * width;
            keys[u] = c;
            float dot = 0;
            for (int64_t i = 0; i < kvl; ++i) dot += ql[i] * c[i];
            float dot_pe = 0;
            for (int64_t i = 0; i < R; ++i) dot_pe += qr[i] * c[kvl + i];
            scores[u] = (dot + dot_pe) * shape.scale;
            mx = std::max(mx, scores[u]);
          }
          float z = 0;
          for (int64_t u = 0; u < len; ++u) z += (scores[u] = std::exp(scores[u] - mx));
          float* o = out + row * NH * kvl + h * kvl;
          std::fill(o, o + kvl, 0.0f);
          for (int64_t u = 0; u < len; ++u) {
            const float p = scores[u] / z;
            const float* c = keys[u];
            for (int64_t i = 0; i < kvl; ++i) o[i] += p * c[i];
          }
        }
      },
      pool->ThreadsFor(items * max_len * (kvl + R) * 2));
}

std::vector<std::string> MtpTensorNames(const ModelConfig& config, const WeightSource& weights) {
  std::vector<std::string> out;
  for (const std::string& name : weights.Names()) {
    if (!absl::StartsWith(name, "model.layers.")) continue;
    const absl::string_view rest = absl::string_view(name).substr(13);
    const size_t dot = rest.find('.');
    int64_t layer = 0;
    if (dot == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dot), &layer)) continue;
    if (layer >= config.num_layers &&
        layer < config.num_layers + config.deepseek.num_nextn_predict_layers) {
      out.push_back(name);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::unique_ptr<ModelStage>> LoadDeepseekStage(const ModelConfig& config,
                                                              std::unique_ptr<WeightSource> weights,
                                                              const StageSpec& spec,
                                                              const KvCacheSpec& kv,
                                                              Backend* backend) {
  if (!config.is_deepseek()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a DeepSeek config: ", ArchitectureName(config.architecture)));
  }
  auto stage = std::make_unique<DeepseekStage>(config, std::move(weights), spec, kv, backend);
  RETURN_IF_ERROR(stage->Load());
  return std::unique_ptr<ModelStage>(std::move(stage));
}

}  // namespace shardserve
