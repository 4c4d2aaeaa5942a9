#include "worker/device_faults.h"

#include "absl/strings/str_cat.h"

namespace shardserve {
namespace {

class Faulty final : public FaultyBackend {
 public:
  Faulty(Backend* base, int64_t fail_at_step) : base_(base), fail_at_step_(fail_at_step) {}

  void BeginStep() override {
    if (steps_++ == fail_at_step_) {
      fault_ = absl::InternalError(
          absl::StrCat("injected device fault at step ", fail_at_step_,
                       " (--fault-device-after-steps): an illegal memory access was encountered"));
    }
  }

  absl::string_view name() const override { return base_->name(); }
  DeviceInfo device_info() const override { return base_->device_info(); }
  bool SupportsOp(Op op, DType weight_dtype) const override {
    return base_->SupportsOp(op, weight_dtype);
  }
  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    if (!fault_.ok()) return fault_;
    return base_->Allocate(bytes);
  }
  absl::StatusOr<std::unique_ptr<Buffer>> UploadWeights(const void* host, size_t bytes) override {
    if (!fault_.ok()) return fault_;
    return base_->UploadWeights(host, bytes);
  }
  absl::StatusOr<std::unique_ptr<Buffer>> PackForMatMul(const Tensor& w) override {
    if (!fault_.ok()) return fault_;
    return base_->PackForMatMul(w);
  }
  absl::Status Synchronize() override { return fault_.ok() ? base_->Synchronize() : fault_; }
  absl::Status Health() override { return fault_.ok() ? base_->Health() : fault_; }

  void CopyToDevice(void* device, const void* host, size_t bytes) override {
    if (fault_.ok()) base_->CopyToDevice(device, host, bytes);
  }
  absl::Status CopyToHost(void* host, const void* device, size_t bytes) override {
    return fault_.ok() ? base_->CopyToHost(host, device, bytes) : fault_;
  }
  void CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (fault_.ok()) base_->CopyOnDevice(dst, src, bytes);
  }
  void Fill(void* device, uint8_t byte, size_t bytes) override {
    if (fault_.ok()) base_->Fill(device, byte, bytes);
  }
  void Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor out) override {
    if (fault_.ok()) base_->Embedding(table, ids, out);
  }
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    if (fault_.ok()) base_->RmsNorm(x, weight, eps, out);
  }
  void MatMul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override {
    if (fault_.ok()) base_->MatMul(x, w, bias, out);
  }
  void Rope(Tensor x, int64_t head_dim, absl::Span<const int32_t> positions,
            absl::Span<const float> inv_freq) override {
    if (fault_.ok()) base_->Rope(x, head_dim, positions, inv_freq);
  }
  void PagedAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                      absl::Span<const AttentionSeq> seqs, const AttentionShape& shape,
                      KvLayer cache, Tensor out) override {
    if (fault_.ok()) base_->PagedAttention(q, k, v, seqs, shape, cache, out);
  }
  void SwiGlu(const Tensor& gate_up, Tensor out) override {
    if (fault_.ok()) base_->SwiGlu(gate_up, out);
  }
  void Add(Tensor x, const Tensor& y) override {
    if (fault_.ok()) base_->Add(x, y);
  }

 private:
  Backend* const base_;
  const int64_t fail_at_step_;
  int64_t steps_ = 0;
  absl::Status fault_;  // sticky, as a CUDA context's error is
};

}  // namespace

std::unique_ptr<FaultyBackend> NewFaultyBackend(Backend* base, int64_t fail_at_step) {
  return std::make_unique<Faulty>(base, fail_at_step);
}

}  // namespace shardserve
