// The parts of a decoder stage's Forward that do not depend on the architecture: where each
// sequence's rows and positions lie in the step, the step's input rows (token embeddings on the
// first stage, the previous stage's hidden states elsewhere) and its output (hidden states for
// the next stage, or on the last stage the final norm and LM head over each sequence's last row
// that asks for logits). Llama-family and DeepSeek stages run their own layers in between.
#ifndef SHARDSERVE_MODEL_STAGE_STEP_H_
#define SHARDSERVE_MODEL_STAGE_STEP_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/stage.h"
#include "model/weights.h"

namespace shardserve {

struct StepRows {
  std::vector<int32_t> positions;  // one per row
  std::vector<AttentionSeq> seqs;  // one per sequence, in batch order
};

StepRows PlanStepRows(absl::Span<const SequenceStep> batch, int64_t total_rows);

// Fills x [total, hidden]: embeddings of the batch's tokens when `first`, else `hidden_in`.
void LoadStepInput(Backend* backend, bool first, const Tensor& embedding,
                   absl::Span<const SequenceStep> batch, absl::Span<const float> hidden_in,
                   Tensor x);

// A [rows, vocab] logits buffer that grows on demand.
struct LogitsBuffer {
  int64_t capacity = 0;  // rows
  std::unique_ptr<Buffer> buffer;
};

// A weight matrix or vector resident on the backend.
struct StageWeight {
  std::unique_ptr<Buffer> buffer;
  Tensor t;
  std::unique_ptr<Buffer> packed;  // t in the backend's matmul layout (t.packed), if it has one
};

// Gives a matmul weight the backend's own layout where it has one (Backend::PackForMatMul).
inline absl::Status PackForMatMul(Backend* backend, StageWeight* w) {
  ASSIGN_OR_RETURN(w->packed, backend->PackForMatMul(w->t));
  if (w->packed != nullptr) w->t.packed = w->packed->data();
  return absl::OkStatus();
}

// A matmul weight packed straight from `host` (the weight file's mapping, which outlives the
// stage) where the backend has its own layout for it: then true, and w is complete without an
// upload (w.t views the host data, which the backend's kernels no longer read).
inline absl::StatusOr<bool> PackFromHost(Backend* backend, const void* host, DType dtype,
                                         int64_t rows, int64_t cols, StageWeight* w) {
  const Tensor t = Tensor::Of(const_cast<void*>(host), dtype, rows, cols);
  ASSIGN_OR_RETURN(w->packed, backend->PackForMatMul(t));
  if (w->packed == nullptr) return false;
  w->t = t;
  w->t.packed = w->packed->data();
  return true;
}

// What every decoder stage holds and answers the same way: its config, weights, backend, KV
// spec, layer range and load-time quantization, the ModelStage accessors and the step check.
class DecoderStageBase : public ModelStage {
 public:
  DecoderStageBase(const ModelConfig& c, std::unique_ptr<WeightSource> weights,
                   const StageSpec& spec, const KvCacheSpec& kv, Backend* backend)
      : config_(c),
        weights_(std::move(weights)),
        backend_(backend),
        kv_(kv),
        begin_(spec.layer_begin),
        end_(spec.layer_end < 0 ? c.num_layers : spec.layer_end),
        quantize_(spec.quantize) {}

  const ModelConfig& config() const override { return config_; }
  int64_t layer_begin() const override { return begin_; }
  int64_t layer_end() const override { return end_; }
  const KvCacheSpec& kv_spec() const override { return kv_; }
  int64_t KvBytesPerToken() const override {
    return (end_ - begin_) * KvCacheValuesPerToken(config_) * static_cast<int64_t>(sizeof(float));
  }

  // The step's skeleton: validate, size the workspaces, the input rows, the architecture's
  // layers (RunLayers), then the output for the next stage or the logits.
  absl::StatusOr<StepOutput> Forward(absl::Span<const SequenceStep> batch,
                                     absl::Span<const float> hidden_in) final;

 protected:
  // What Forward needs of a derived stage's workspaces, sized for `total` rows.
  struct StepBuffers {
    void* x = nullptr;  // [total, hidden] F32: the residual stream
    void* h = nullptr;  // scratch for the output
    LogitsBuffer* logits = nullptr;
    const Tensor* embedding = nullptr;
    const Tensor* final_norm = nullptr;
    const Tensor* lm_head = nullptr;
  };
  virtual absl::StatusOr<StepBuffers> PrepareStep(int64_t total) = 0;
  // The StepBuffers over a derived stage's workspace (its x, h and logits) and the head weights.
  template <typename Workspace>
  StepBuffers BuffersOf(Workspace& ws) {
    return StepBuffers{ws.x->data(), ws.h->data(),   &ws.logits,
                       &embed_.t,    &final_norm_.t, &lm_head_.t};
  }
  virtual absl::Status RunLayers(Tensor x, int64_t total, const StepRows& rows) = 0;

  bool is_first() const { return begin_ == 0; }
  bool is_last() const { return end_ == config_.num_layers; }
  // INVALID_ARGUMENT for a quantization other than Q8_0/Q4_0 or a layer range outside the model.
  absl::Status CheckSpec() const;
  absl::StatusOr<int64_t> Validate(absl::Span<const SequenceStep> batch,
                                   absl::Span<const float> hidden_in) const {
    return ValidateStepBatch(batch, hidden_in, config_, kv_, is_first());
  }
  // A vector (norm weight or bias), widened to F32.
  absl::StatusOr<StageWeight> Vector(const std::string& name, int64_t n);
  // Last stage: the final norm and the LM head (the embedding when tied and the file has no
  // lm_head), through the stage's own `matrix(name, rows, cols)` loader.
  template <typename MatrixFn>
  absl::Status LoadHead(MatrixFn matrix) {
    const int64_t H = config_.hidden_size;
    ASSIGN_OR_RETURN(final_norm_, Vector("model.norm.weight", H));
    const bool tied = config_.tie_word_embeddings && !weights_->Has("lm_head.weight");
    ASSIGN_OR_RETURN(lm_head_, matrix(tied ? "model.embed_tokens.weight" : "lm_head.weight",
                                      config_.vocab_size, H));
    return absl::OkStatus();
  }

  ModelConfig config_;
  std::unique_ptr<WeightSource> weights_;
  Backend* backend_;
  KvCacheSpec kv_;
  int64_t begin_ = 0, end_ = 0;
  DType quantize_ = DType::kF32;
  StageWeight embed_, final_norm_, lm_head_;
};

// The stage's output for the step whose final hidden states are `x`. On the last stage `h` is
// scratch for at least one row per sequence.
absl::StatusOr<StepOutput> StageOutput(Backend* backend, const ModelConfig& config, bool last,
                                       absl::Span<const SequenceStep> batch, const StepRows& rows,
                                       Tensor x, void* h, const Tensor& final_norm,
                                       const Tensor& lm_head, LogitsBuffer& logits);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_STAGE_STEP_H_
