#include "model/stage_step.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/layers.h"
#include "common/status.h"

namespace shardserve {

absl::StatusOr<StepOutput> DecoderStageBase::Forward(absl::Span<const SequenceStep> batch,
                                                     absl::Span<const float> hidden_in) {
  ASSIGN_OR_RETURN(const int64_t total, Validate(batch, hidden_in));
  ASSIGN_OR_RETURN(const StepBuffers b, PrepareStep(total));
  const StepRows rows = PlanStepRows(batch, total);
  Tensor x = Tensor::Of(b.x, DType::kF32, total, config_.hidden_size);
  LoadStepInput(backend_, is_first(), *b.embedding, batch, hidden_in, x);
  RETURN_IF_ERROR(RunLayers(x, total, rows));
  return StageOutput(backend_, config_, is_last(), batch, rows, x, b.h, *b.final_norm, *b.lm_head,
                     *b.logits);
}

absl::StatusOr<StageWeight> DecoderStageBase::Vector(const std::string& name, int64_t n) {
  ASSIGN_OR_RETURN(std::vector<float> host, weights_->GetVectorF32(name, n));
  StageWeight w;
  ASSIGN_OR_RETURN(w.buffer, backend_->Allocate(n * sizeof(float)));
  backend_->CopyToDevice(w.buffer->data(), host.data(), n * sizeof(float));
  w.t = Tensor::Of(w.buffer->data(), DType::kF32, 1, n);
  return w;
}

absl::Status DecoderStageBase::CheckSpec() const {
  if (quantize_ != DType::kF32 && quantize_ != DType::kQ8_0 && quantize_ != DType::kQ4_0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot quantize to ", DTypeName(quantize_), " (supported: q8_0, q4_0)"));
  }
  if (begin_ < 0 || begin_ >= end_ || end_ > config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layers ", LayerRangeText(begin_, end_), " are not a range of the model's ",
                     config_.num_layers, " layers (0-", config_.num_layers - 1, ")"));
  }
  return absl::OkStatus();
}

StepRows PlanStepRows(absl::Span<const SequenceStep> batch, int64_t total_rows) {
  StepRows r;
  r.positions.reserve(total_rows);
  r.seqs.reserve(batch.size());
  int64_t row = 0;
  for (const SequenceStep& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    r.seqs.push_back({row, n, s.start_pos, absl::MakeConstSpan(s.block_table)});
    for (int64_t t = 0; t < n; ++t) r.positions.push_back(static_cast<int32_t>(s.start_pos + t));
    row += n;
  }
  return r;
}

void LoadStepInput(Backend* backend, bool first, const Tensor& embedding,
                   absl::Span<const SequenceStep> batch, absl::Span<const float> hidden_in,
                   Tensor x) {
  if (first) {
    std::vector<int32_t> ids;
    ids.reserve(x.rows);
    for (const SequenceStep& s : batch) ids.insert(ids.end(), s.tokens.begin(), s.tokens.end());
    backend->Embedding(embedding, ids, x);
  } else {
    backend->CopyToDevice(x.data, hidden_in.data(),
                          static_cast<size_t>(x.rows * x.cols) * sizeof(float));
  }
}

absl::StatusOr<StepOutput> StageOutput(Backend* backend, const ModelConfig& config, bool last,
                                       absl::Span<const SequenceStep> batch, const StepRows& rows,
                                       Tensor x, void* h_buffer, const Tensor& final_norm,
                                       const Tensor& lm_head, LogitsBuffer& logits) {
  const int64_t H = x.cols;
  StepOutput out;
  if (!last) {
    out.rows = x.rows;
    out.cols = H;
    out.data.resize(static_cast<size_t>(x.rows * H));
    RETURN_IF_ERROR(backend->CopyToHost(out.data.data(), x.data, out.data.size() * sizeof(float)));
    return out;
  }
  // Logits only for the rows that need sampling.
  std::vector<int64_t> sampled;
  for (size_t i = 0; i < rows.seqs.size(); ++i) {
    if (batch[i].compute_logits) {
      sampled.push_back(rows.seqs[i].row_begin + rows.seqs[i].num_tokens - 1);
    }
  }
  out.rows = static_cast<int64_t>(sampled.size());
  out.cols = config.vocab_size;
  if (sampled.empty()) return out;
  Tensor h = Tensor::Of(h_buffer, DType::kF32, out.rows, H);
  for (size_t i = 0; i < sampled.size(); ++i) {
    backend->CopyOnDevice(h.row(static_cast<int64_t>(i)), x.row(sampled[i]), H * sizeof(float));
  }
  backend->RmsNorm(h, final_norm, static_cast<float>(config.rms_norm_eps), h);
  if (out.rows > logits.capacity) {
    const int64_t cap = std::max<int64_t>(out.rows, 16);
    ASSIGN_OR_RETURN(logits.buffer,
                     backend->Allocate(static_cast<size_t>(cap * out.cols) * sizeof(float)));
    logits.capacity = cap;
  }
  Tensor l = Tensor::Of(logits.buffer->data(), DType::kF32, out.rows, out.cols);
  backend->MatMul(h, lm_head, nullptr, l);
  out.logits = l;
  const bool keep = std::all_of(batch.begin(), batch.end(), [](const SequenceStep& s) {
    return !s.compute_logits || s.keep_logits;
  });
  if (keep) return out;
  out.data.resize(static_cast<size_t>(out.rows * out.cols));
  RETURN_IF_ERROR(backend->CopyToHost(out.data.data(), l.data, out.data.size() * sizeof(float)));
  return out;
}

}  // namespace shardserve
