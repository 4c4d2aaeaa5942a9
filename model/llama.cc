#include "model/llama.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kernels/quant_format.h"
#include "model/stage_step.h"

namespace shardserve {
namespace {

using Weight = StageWeight;

struct LayerWeights {
  Weight input_norm, post_norm;
  Weight q, k, v, o;
  Weight q_bias, k_bias, v_bias;
  Weight gate, up, down;
};

// Grows on demand; activations of one step.
struct Workspace {
  int64_t capacity = 0;
  std::unique_ptr<Buffer> x, h, q, k, v, attn, gate_up, act;
  LogitsBuffer logits;  // [rows, vocab], copied out by Forward
};

class LlamaStage : public DecoderStageBase {
 public:
  LlamaStage(const ModelConfig& c, std::unique_ptr<WeightSource> weights, const StageSpec& spec,
             const KvCacheSpec& kv, Backend* backend)
      : DecoderStageBase(c, std::move(weights), spec, kv, backend) {
    inv_freq_ = c.RopeInvFreq();
  }

  absl::Status Load() {
    const ModelConfig& c = config_;
    RETURN_IF_ERROR(CheckSpec());
    const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
    if (is_first()) {
      ASSIGN_OR_RETURN(embed_, Matrix("model.embed_tokens.weight", c.vocab_size, H, false));
    }
    for (int64_t l = begin_; l < end_; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerWeights w;
      ASSIGN_OR_RETURN(w.input_norm, Vector(p + "input_layernorm.weight", H));
      ASSIGN_OR_RETURN(w.post_norm, Vector(p + "post_attention_layernorm.weight", H));
      ASSIGN_OR_RETURN(w.q, Matrix(p + "self_attn.q_proj.weight", c.num_heads * D, H));
      ASSIGN_OR_RETURN(w.k, Matrix(p + "self_attn.k_proj.weight", c.num_kv_heads * D, H));
      ASSIGN_OR_RETURN(w.v, Matrix(p + "self_attn.v_proj.weight", c.num_kv_heads * D, H));
      ASSIGN_OR_RETURN(w.o, Matrix(p + "self_attn.o_proj.weight", H, c.num_heads * D));
      if (c.qkv_bias) {
        ASSIGN_OR_RETURN(w.q_bias, Vector(p + "self_attn.q_proj.bias", c.num_heads * D));
        ASSIGN_OR_RETURN(w.k_bias, Vector(p + "self_attn.k_proj.bias", c.num_kv_heads * D));
        ASSIGN_OR_RETURN(w.v_bias, Vector(p + "self_attn.v_proj.bias", c.num_kv_heads * D));
      }
      ASSIGN_OR_RETURN(w.gate, Matrix(p + "mlp.gate_proj.weight", I, H));
      ASSIGN_OR_RETURN(w.up, Matrix(p + "mlp.up_proj.weight", I, H));
      ASSIGN_OR_RETURN(w.down, Matrix(p + "mlp.down_proj.weight", H, I));
      layers_.push_back(std::move(w));
    }
    if (is_last()) {
      RETURN_IF_ERROR(LoadHead([this](const std::string& name, int64_t rows, int64_t cols) {
        return Matrix(name, rows, cols);
      }));
    }
    RETURN_IF_ERROR(ResolveKvSpec(c, &kv_));
    const size_t layer_bytes =
        static_cast<size_t>(kv_.num_blocks * kv_.block_size) * c.num_kv_heads * D * sizeof(float);
    for (int64_t l = begin_; l < end_; ++l) {
      ASSIGN_OR_RETURN(auto kb, backend_->Allocate(layer_bytes));
      ASSIGN_OR_RETURN(auto vb, backend_->Allocate(layer_bytes));
      backend_->Fill(kb->data(), 0, layer_bytes);
      backend_->Fill(vb->data(), 0, layer_bytes);
      kv_cache_.push_back(
          KvLayer{static_cast<float*>(kb->data()), static_cast<float*>(vb->data())});
      kv_buffers_.push_back(std::move(kb));
      kv_buffers_.push_back(std::move(vb));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<StepBuffers> PrepareStep(int64_t total) override {
    RETURN_IF_ERROR(Reserve(total));
    return BuffersOf(ws_);
  }

  absl::Status RunLayers(Tensor x, int64_t total, const StepRows& rows) override {
    for (size_t l = 0; l < layers_.size(); ++l) RunLayer(l, x, total, rows.positions, rows.seqs);
    return absl::OkStatus();
  }

 private:
  void RunLayer(size_t l, Tensor x, int64_t total, const std::vector<int32_t>& positions,
                const std::vector<AttentionSeq>& seqs) {
    const ModelConfig& c = config_;
    const LayerWeights& w = layers_[l];
    const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    Tensor h = Tensor::Of(ws_.h->data(), DType::kF32, total, H);
    Tensor q = Tensor::Of(ws_.q->data(), DType::kF32, total, c.num_heads * D);
    Tensor k = Tensor::Of(ws_.k->data(), DType::kF32, total, c.num_kv_heads * D);
    Tensor v = Tensor::Of(ws_.v->data(), DType::kF32, total, c.num_kv_heads * D);
    Tensor attn = Tensor::Of(ws_.attn->data(), DType::kF32, total, c.num_heads * D);
    Tensor gate_up = Tensor::Of(ws_.gate_up->data(), DType::kF32, total, 2 * I);
    Tensor act = Tensor::Of(ws_.act->data(), DType::kF32, total, I);

    backend_->RmsNorm(x, w.input_norm.t, eps, h);
    backend_->MatMul(h, w.q.t, c.qkv_bias ? &w.q_bias.t : nullptr, q);
    backend_->MatMul(h, w.k.t, c.qkv_bias ? &w.k_bias.t : nullptr, k);
    backend_->MatMul(h, w.v.t, c.qkv_bias ? &w.v_bias.t : nullptr, v);
    backend_->Rope(q, D, positions, inv_freq_);
    backend_->Rope(k, D, positions, inv_freq_);
    AttentionShape shape{c.num_heads, c.num_kv_heads, D, kv_.block_size, kv_.num_blocks};
    const KvLayer& cache = kv_cache_[l];
    backend_->PagedAttention(q, k, v, seqs, shape, cache, attn);
    backend_->MatMul(attn, w.o.t, nullptr, h);
    backend_->Add(x, h);

    backend_->RmsNorm(x, w.post_norm.t, eps, h);
    // gate and up write the two halves of one [total, 2I] matrix for SwiGlu.
    Tensor gate_half{gate_up.data, DType::kF32, total, I, 2 * I};
    Tensor up_half{gate_up.f32() + I, DType::kF32, total, I, 2 * I};
    backend_->MatMul(h, w.gate.t, nullptr, gate_half);
    backend_->MatMul(h, w.up.t, nullptr, up_half);
    backend_->SwiGlu(gate_up, act);
    backend_->MatMul(act, w.down.t, nullptr, h);
    backend_->Add(x, h);
  }

  absl::Status Reserve(int64_t total) {
    if (total <= ws_.capacity) return absl::OkStatus();
    const ModelConfig& c = config_;
    const int64_t cap = std::max<int64_t>(total, 16);
    auto alloc = [&](std::unique_ptr<Buffer>* b, int64_t cols) -> absl::Status {
      ASSIGN_OR_RETURN(*b, backend_->Allocate(static_cast<size_t>(cap * cols) * sizeof(float)));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(alloc(&ws_.x, c.hidden_size));
    RETURN_IF_ERROR(alloc(&ws_.h, std::max(c.hidden_size, c.num_heads * c.head_dim)));
    RETURN_IF_ERROR(alloc(&ws_.q, c.num_heads * c.head_dim));
    RETURN_IF_ERROR(alloc(&ws_.k, c.num_kv_heads * c.head_dim));
    RETURN_IF_ERROR(alloc(&ws_.v, c.num_kv_heads * c.head_dim));
    RETURN_IF_ERROR(alloc(&ws_.attn, c.num_heads * c.head_dim));
    RETURN_IF_ERROR(alloc(&ws_.gate_up, 2 * c.intermediate_size));
    RETURN_IF_ERROR(alloc(&ws_.act, c.intermediate_size));
    ws_.capacity = cap;
    return absl::OkStatus();
  }

  // A [rows, cols] matrix in the config's dtype (any type for GGUF files), used in place or,
  // with `quantize`, quantized to Q8_0 / Q4_0 at load (rows of a multiple of 32 values only).
  absl::StatusOr<Weight> Matrix(const std::string& name, int64_t rows, int64_t cols,
                                bool quantize = true) {
    ASSIGN_OR_RETURN(TensorRef t, weights_->GetWithShape(name, {rows, cols}));
    if (t.dtype != config_.dtype && !config_.mixed_dtypes) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is ", DTypeName(t.dtype),
                                                     " but config.json says torch_dtype ",
                                                     DTypeName(config_.dtype)));
    }
    if (t.dtype == DType::kI32) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is I32"));
    }
    Weight w;
    if (quantize && quantize_ != DType::kF32 && !IsQuantized(t.dtype) && cols % 32 == 0) {
      const size_t row_bytes = RowBytes(quantize_, cols);
      std::vector<uint8_t> host(row_bytes * rows);
      std::vector<float> row(cols);
      const auto* src = static_cast<const uint8_t*>(t.data);
      for (int64_t r = 0; r < rows; ++r) {
        DequantizeRow(t.dtype, src + RowBytes(t.dtype, cols) * r, cols, row.data());
        QuantizeRow(quantize_, row.data(), cols, host.data() + row_bytes * r);
      }
      ASSIGN_OR_RETURN(w.buffer, backend_->Allocate(host.size()));
      backend_->CopyToDevice(w.buffer->data(), host.data(), host.size());
      w.t = Tensor::Of(w.buffer->data(), quantize_, rows, cols);
      RETURN_IF_ERROR(PackForMatMul(backend_, &w));
      return w;
    }
    // The embedding (quantize false) is looked up by rows, never multiplied.
    if (quantize) {
      ASSIGN_OR_RETURN(bool packed, PackFromHost(backend_, t.data, t.dtype, rows, cols, &w));
      if (packed) return w;
    }
    ASSIGN_OR_RETURN(w.buffer, backend_->UploadWeights(t.data, t.nbytes));
    w.t = Tensor::Of(w.buffer->data(), t.dtype, rows, cols);
    return w;
  }

  std::vector<float> inv_freq_;
  std::vector<LayerWeights> layers_;
  std::vector<std::unique_ptr<Buffer>> kv_buffers_;
  std::vector<KvLayer> kv_cache_;
  Workspace ws_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelStage>> LoadLlamaStage(const ModelConfig& config,
                                                           std::unique_ptr<WeightSource> weights,
                                                           const StageSpec& spec,
                                                           const KvCacheSpec& kv,
                                                           Backend* backend) {
  auto stage = std::make_unique<LlamaStage>(config, std::move(weights), spec, kv, backend);
  RETURN_IF_ERROR(stage->Load());
  return std::unique_ptr<ModelStage>(std::move(stage));
}

}  // namespace shardserve
