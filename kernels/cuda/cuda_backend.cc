#include "kernels/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <tuple>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/kernels.h"

namespace shardserve {
namespace {

using cuda::ElemType;

constexpr size_t kCublasWorkspaceBytes = 32u << 20;

absl::Status CublasStatus(cublasStatus_t s, absl::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cublasLtGetStatusName(s), " (", cublasLtGetStatusString(s), ")"));
}

bool ToElemType(DType t, ElemType* out) {
  switch (t) {
    case DType::kF32:
      *out = ElemType::kF32;
      return true;
    case DType::kF16:
      *out = ElemType::kF16;
      return true;
    case DType::kBF16:
      *out = ElemType::kBF16;
      return true;
    default:
      return false;
  }
}

cudaDataType_t CudaType(ElemType t) {
  switch (t) {
    case ElemType::kF16:
      return CUDA_R_16F;
    case ElemType::kBF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// Device memory counted against the backend's budget.
struct MemoryBudget {
  std::atomic<int64_t> used{0};
  int64_t limit = 0;
};

class DeviceBuffer : public Buffer {
 public:
  DeviceBuffer(int device, DeviceMemory mem, std::shared_ptr<MemoryBudget> budget)
      : device_(device), mem_(std::move(mem)), budget_(std::move(budget)) {}
  ~DeviceBuffer() override {
    // mem_ is freed after this body, on the right device.
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      LOG(WARNING) << "freeing a buffer: cudaSetDevice(" << device_
                   << "): " << cudaGetErrorString(e);
    }
    budget_->used -= static_cast<int64_t>(mem_.size());
  }
  void* data() override { return mem_.get(); }
  size_t size() const override { return mem_.size(); }

 private:
  int device_;
  DeviceMemory mem_;
  std::shared_ptr<MemoryBudget> budget_;
};

// A device copy of a small host array, re-uploaded only when its contents change: a step passes
// the same positions and block tables to every layer.
class HostArrayCache {
 public:
  // Returns the device copy of `bytes` bytes at `host`, or null on failure (recorded in *error).
  const void* Put(const void* host, size_t bytes, cudaStream_t stream, absl::Status* error) {
    if (bytes == 0) return mem_.get();
    if (bytes == last_.size() && std::memcmp(last_.data(), host, bytes) == 0) return mem_.get();
    if (bytes > mem_.size()) {
      // Queued kernels may still read the old copy.
      *error = CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      if (!error->ok()) return nullptr;
      auto m = DeviceMemory::Allocate(bytes * 2);
      if (!m.ok()) {
        *error = m.status();
        return nullptr;
      }
      mem_ = std::move(*m);
    }
    // From pageable memory: the call returns once `host` has been read.
    *error = CudaStatus(cudaMemcpyAsync(mem_.get(), host, bytes, cudaMemcpyHostToDevice, stream),
                        "cudaMemcpyAsync (index array)");
    if (!error->ok()) return nullptr;
    last_.assign(static_cast<const char*>(host), static_cast<const char*>(host) + bytes);
    return mem_.get();
  }

 private:
  std::vector<char> last_;
  DeviceMemory mem_;
};

// One cuBLASLt matmul configuration: descriptors and the algorithm the heuristic picked.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic{};
  ~GemmPlan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& o) {
    ASSIGN_OR_RETURN(CudaDeviceInfo info, DescribeCudaDevice(o.device));
    auto b = std::unique_ptr<CudaBackend>(new CudaBackend(info));
    b->budget_->limit =
        static_cast<int64_t>(o.memory_fraction * static_cast<double>(info.total_bytes));
    ASSIGN_OR_RETURN(b->stream_, CudaStream::Create());
    RETURN_IF_ERROR(CublasStatus(cublasLtCreate(&b->lt_), "cublasLtCreate"));
    ASSIGN_OR_RETURN(b->lt_workspace_, DeviceMemory::Allocate(kCublasWorkspaceBytes));
    return b;
  }

  ~CudaBackend() override {
    if (cudaError_t e = cudaSetDevice(info_.device); e != cudaSuccess) {
      LOG(WARNING) << "CUDA backend shutdown: cudaSetDevice: " << cudaGetErrorString(e);
    }
    if (stream_.get() != nullptr) {
      const absl::Status s = stream_.Synchronize();
      if (!s.ok()) LOG(WARNING) << "CUDA backend shutdown: " << s.message();
    }
    plans_.clear();
    if (lt_ != nullptr) {
      const cublasStatus_t s = cublasLtDestroy(lt_);
      if (s != CUBLAS_STATUS_SUCCESS) LOG(WARNING) << CublasStatus(s, "cublasLtDestroy").message();
    }
  }

  absl::string_view name() const override { return name_; }
  // Free: what the memory fraction still allows, or less when the device itself has less (other
  // processes on the same GPU).
  DeviceInfo device_info() const override {
    int64_t free = std::max<int64_t>(0, FreeBytes());
    size_t device_free = 0, device_total = 0;
    if (cudaSetDevice(info_.device) == cudaSuccess &&
        cudaMemGetInfo(&device_free, &device_total) == cudaSuccess) {
      free = std::min(free, static_cast<int64_t>(device_free));
    }
    return DeviceInfo{.uuid = info_.uuid,
                      .total_bytes = static_cast<uint64_t>(budget_->limit),
                      .free_bytes = static_cast<uint64_t>(free)};
  }

  bool SupportsOp(Op op, DType weight_dtype) const override {
    ElemType t;
    return ToElemType(weight_dtype, &t);
  }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    if (!Ready()) return error_;
    const int64_t n = static_cast<int64_t>(bytes);
    if (budget_->used.fetch_add(n) + n > budget_->limit) {
      budget_->used -= n;
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes on ", name_, ": ", budget_->used.load(),
                       " of ", budget_->limit, " bytes allowed by the memory fraction are in use"));
    }
    auto mem = DeviceMemory::Allocate(bytes);
    if (!mem.ok()) {
      budget_->used -= n;
      return mem.status();
    }
    return std::unique_ptr<Buffer>(
        std::make_unique<DeviceBuffer>(info_.device, std::move(*mem), budget_));
  }

  absl::StatusOr<std::unique_ptr<Buffer>> UploadWeights(const void* host, size_t bytes) override {
    ASSIGN_OR_RETURN(std::unique_ptr<Buffer> b, Allocate(bytes));
    RETURN_IF_ERROR(CudaStatus(cudaMemcpy(b->data(), host, bytes, cudaMemcpyHostToDevice),
                               "uploading weights"));
    return b;
  }

  absl::Status Synchronize() override {
    Bind();
    if (error_.ok()) Fail(stream_.Synchronize());
    return error_;
  }

  // The first failure, or a sticky error the device reports now (an asynchronous fault of a
  // queued kernel or NCCL transfer shows on any call): cudaStreamQuery does not wait.
  absl::Status Health() override {
    if (Ready()) {
      const cudaError_t e = cudaStreamQuery(s());
      if (e != cudaSuccess && e != cudaErrorNotReady) Fail(CudaStatus(e, "device health"));
    }
    return error_;
  }

  void CopyToDevice(void* device, const void* host, size_t bytes) override {
    if (!Ready() || bytes == 0) return;
    Fail(CudaStatus(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, s()),
                    "CopyToDevice"));
  }

  absl::Status CopyToHost(void* host, const void* device, size_t bytes) override {
    if (!Ready()) return error_;
    if (bytes > 0) {
      Fail(CudaStatus(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, s()),
                      "CopyToHost"));
    }
    return Synchronize();
  }

  void CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (!Ready() || bytes == 0) return;
    Fail(CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s()),
                    "CopyOnDevice"));
  }

  void Fill(void* device, uint8_t byte, size_t bytes) override {
    if (!Ready() || bytes == 0) return;
    Fail(CudaStatus(cudaMemsetAsync(device, byte, bytes, s()), "Fill"));
  }

  void Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor out) override {
    if (!Ready() || ids.empty()) return;
    ElemType t;
    if (!ToElemType(table.dtype, &t)) return Unsupported("Embedding", table.dtype);
    const auto* d_ids = static_cast<const int32_t*>(Upload(&ids_cache_, ids));
    if (d_ids == nullptr) return;
    cuda::LaunchEmbedding(table.data, t, table.stride, d_ids, static_cast<int64_t>(ids.size()),
                          table.cols, out.f32(), out.stride, s());
    CheckLaunch("Embedding");
  }

  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    if (!Ready()) return;
    cuda::LaunchRmsNorm(x.f32(), x.stride, weight.f32(), eps, x.rows, x.cols, out.f32(), out.stride,
                        s());
    CheckLaunch("RmsNorm");
  }

  void MatMul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override {
    if (!Ready() || x.rows == 0) return;
    ElemType t;
    if (!ToElemType(w.dtype, &t)) return Unsupported("MatMul", w.dtype);
    const float* b = bias != nullptr ? bias->f32() : nullptr;
    if (x.rows <= cuda::kMaxGemvRows && w.stride == w.cols) {
      cuda::LaunchGemv(x.f32(), x.stride, x.rows, w.data, t, w.rows, w.cols, b, out.f32(),
                       out.stride, s());
      CheckLaunch("MatMul (GEMV)");
      return;
    }
    Gemm(x, w, t, out);
    if (b != nullptr && Ready()) {
      cuda::LaunchAddBias(out.f32(), out.stride, out.rows, out.cols, b, s());
      CheckLaunch("MatMul (bias)");
    }
  }

  void Rope(Tensor x, int64_t head_dim, absl::Span<const int32_t> positions,
            absl::Span<const float> inv_freq) override {
    if (!Ready() || x.rows == 0) return;
    const auto* d_pos = static_cast<const int32_t*>(Upload(&positions_cache_, positions));
    const auto* d_freq = static_cast<const float*>(Upload(&inv_freq_cache_, inv_freq));
    if (d_pos == nullptr || d_freq == nullptr) return;
    cuda::LaunchRope(x.f32(), x.stride, x.rows, x.cols, head_dim, d_pos, d_freq, s());
    CheckLaunch("Rope");
  }

  void PagedAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                      absl::Span<const AttentionSeq> seqs, const AttentionShape& shape,
                      KvLayer cache, Tensor out) override {
    if (!Ready() || q.rows == 0) return;
    // One int32 array: row_len [rows], row_table [rows], then the block tables.
    const int64_t rows = q.rows;
    attn_index_.assign(static_cast<size_t>(2 * rows), 0);
    int64_t max_len = 0;
    for (const AttentionSeq& sq : seqs) {
      const int32_t table_at = static_cast<int32_t>(attn_index_.size() - 2 * rows);
      attn_index_.insert(attn_index_.end(), sq.block_table.begin(), sq.block_table.end());
      for (int64_t t = 0; t < sq.num_tokens; ++t) {
        const int64_t r = sq.row_begin + t;
        attn_index_[r] = static_cast<int32_t>(sq.start_pos + t + 1);
        attn_index_[rows + r] = table_at;
      }
      max_len = std::max(max_len, sq.start_pos + sq.num_tokens);
    }
    const auto* d_index =
        static_cast<const int32_t*>(Upload(&attn_index_cache_, absl::MakeConstSpan(attn_index_)));
    if (d_index == nullptr) return;
    const size_t scratch_bytes =
        cuda::AttentionScratchFloats(rows, shape.num_heads, shape.head_dim, max_len) *
        sizeof(float);
    if (!Reserve(&attn_scratch_, scratch_bytes)) return;
    cuda::AttentionLaunch a;
    a.q = q.f32();
    a.q_stride = q.stride;
    a.k = k.f32();
    a.k_stride = k.stride;
    a.v = v.f32();
    a.v_stride = v.stride;
    a.k_cache = cache.k;
    a.v_cache = cache.v;
    a.out = out.f32();
    a.out_stride = out.stride;
    a.rows = rows;
    a.num_heads = shape.num_heads;
    a.num_kv_heads = shape.num_kv_heads;
    a.head_dim = shape.head_dim;
    a.block_size = shape.block_size;
    a.max_len = max_len;
    a.row_len = d_index;
    a.row_table = d_index + rows;
    a.tables = d_index + 2 * rows;
    a.scratch = attn_scratch_.as<float>();
    cuda::LaunchPagedAttention(a, s());
    CheckLaunch("PagedAttention");
  }

  void SwiGlu(const Tensor& gate_up, Tensor out) override {
    if (!Ready()) return;
    cuda::LaunchSwiGlu(gate_up.f32(), gate_up.stride, out.rows, out.cols, out.f32(), out.stride,
                       s());
    CheckLaunch("SwiGlu");
  }

  void Add(Tensor x, const Tensor& y) override {
    if (!Ready()) return;
    cuda::LaunchAdd(x.f32(), x.stride, y.f32(), y.stride, x.rows, x.cols, s());
    CheckLaunch("Add");
  }

  int64_t FreeBytes() const { return budget_->limit - budget_->used.load(); }

  absl::StatusOr<std::vector<SampleResult>> Sample(
      const Tensor& logits, absl::Span<const SamplingParams> params,
      absl::Span<const int64_t> positions, absl::Span<const absl::Span<const int32_t>> histories) {
    const int64_t rows = logits.rows, vocab = logits.cols;
    if (static_cast<int64_t>(params.size()) != rows ||
        static_cast<int64_t>(positions.size()) != rows ||
        static_cast<int64_t>(histories.size()) != rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SampleOnDevice: ", rows, " logit rows but ", params.size(), " parameter sets, ",
          positions.size(), " positions and ", histories.size(), " histories"));
    }
    if (logits.dtype != DType::kF32) {
      return absl::InvalidArgumentError("SampleOnDevice: logits must be F32");
    }
    if (rows == 0) return std::vector<SampleResult>{};
    std::vector<cuda::DeviceSampleParams> dp(static_cast<size_t>(rows));
    std::vector<int32_t> pairs;
    std::unordered_map<int32_t, int32_t> counts;
    for (int64_t r = 0; r < rows; ++r) {
      const SamplingParams& p = params[r];
      cuda::DeviceSampleParams& d = dp[r];
      d.temperature = p.temperature;
      d.top_k = p.top_k;
      d.top_p = p.top_p;
      d.min_p = p.min_p;
      d.repetition_penalty = p.repetition_penalty;
      d.presence_penalty = p.presence_penalty;
      d.frequency_penalty = p.frequency_penalty;
      d.seed = p.seed;
      d.position = positions[r];
      d.penalty_begin = static_cast<int32_t>(pairs.size() / 2);
      if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f ||
          p.frequency_penalty != 0.0f) {
        counts.clear();
        for (int32_t t : histories[r]) {
          if (t >= 0 && t < vocab) ++counts[t];
        }
        for (const auto& [t, n] : counts) {
          pairs.push_back(t);
          pairs.push_back(n);
        }
      }
      d.penalty_count = static_cast<int32_t>(pairs.size() / 2) - d.penalty_begin;
    }
    Bind();
    if (!error_.ok()) return error_;
    const auto* d_params = static_cast<const cuda::DeviceSampleParams*>(
        Upload(&sample_params_cache_, absl::MakeConstSpan(dp)));
    const auto* d_pairs =
        static_cast<const int32_t*>(Upload(&sample_pairs_cache_, absl::MakeConstSpan(pairs)));
    const size_t n = static_cast<size_t>(rows * vocab);
    if (d_params == nullptr || (d_pairs == nullptr && !pairs.empty()) ||
        !Reserve(&sample_f32_, n * sizeof(float)) || !Reserve(&sample_f64_, n * sizeof(double)) ||
        !Reserve(&sample_out_, static_cast<size_t>(rows) * sizeof(cuda::DeviceSampleResult))) {
      return error_;
    }
    cuda::LaunchSample(logits.f32(), logits.stride, rows, vocab, d_params, d_pairs,
                       sample_f32_.as<float>(), sample_f64_.as<double>(),
                       sample_out_.as<cuda::DeviceSampleResult>(), s());
    CheckLaunch("SampleOnDevice");
    std::vector<cuda::DeviceSampleResult> host(static_cast<size_t>(rows));
    RETURN_IF_ERROR(
        CopyToHost(host.data(), sample_out_.get(), host.size() * sizeof(cuda::DeviceSampleResult)));
    std::vector<SampleResult> results;
    results.reserve(host.size());
    for (const auto& h : host) results.push_back({h.token, h.logprob});
    return results;
  }

 private:
  explicit CudaBackend(const CudaDeviceInfo& info)
      : info_(info),
        name_(absl::StrCat("cuda:", info.device, " (", info.name, ")")),
        budget_(std::make_shared<MemoryBudget>()) {}

  cudaStream_t s() const { return stream_.get(); }
  // Makes this backend's device current for the calling thread; a failure is sticky (error_).
  void Bind() { Fail(CudaStatus(cudaSetDevice(info_.device), "cudaSetDevice")); }

  // Binds the device; false once an op has failed (later ops are skipped).
  bool Ready() {
    Bind();
    return error_.ok();
  }

  void Fail(const absl::Status& st) {
    if (st.ok() || !error_.ok()) return;
    LOG(ERROR) << name_ << ": " << st.message();
    error_ = st;
  }

  void CheckLaunch(absl::string_view op) {
    Fail(CudaStatus(cudaGetLastError(), absl::StrCat(op, " kernel launch")));
  }

  void Unsupported(absl::string_view op, DType t) {
    Fail(absl::UnimplementedError(
        absl::StrCat(op, " with ", DTypeName(t), " weights is not supported on ", name_)));
  }

  template <typename T>
  const void* Upload(HostArrayCache* cache, absl::Span<const T> host) {
    absl::Status st;
    const void* p = cache->Put(host.data(), host.size() * sizeof(T), s(), &st);
    Fail(st);
    return p;
  }

  // Grows a scratch area to at least `bytes`; false (recorded) on failure.
  bool Reserve(DeviceMemory* m, size_t bytes) {
    if (bytes <= m->size()) return true;
    Fail(stream_.Synchronize());  // queued kernels may still use the old area
    if (!error_.ok()) return false;
    auto grown = DeviceMemory::Allocate(bytes + bytes / 2);
    if (!grown.ok()) {
      Fail(grown.status());
      return false;
    }
    *m = std::move(*grown);
    return true;
  }

  // out = x * w^T on cuBLASLt. cuBLASLt is column-major: out^T [m, n] = w [k, m]^T * x^T [k, n],
  // where a row-major [rows, ld] matrix is a column-major [ld, rows] one.
  void Gemm(const Tensor& x, const Tensor& w, ElemType t, Tensor out) {
    const int64_t m = w.rows, n = x.rows, k = w.cols;
    const void* b = x.data;
    int64_t ldb = x.stride;
    if (t != ElemType::kF32) {
      const size_t bytes = static_cast<size_t>(n * k) * 2;
      if (!Reserve(&act_scratch_, bytes)) return;
      cuda::LaunchConvertActivations(x.f32(), x.stride, n, k, t, act_scratch_.get(), s());
      CheckLaunch("MatMul (activation conversion)");
      b = act_scratch_.get();
      ldb = k;
    }
    GemmPlan* plan = Plan(t, m, n, k, w.stride, ldb, out.stride);
    if (plan == nullptr) return;
    const float alpha = 1.0f, beta = 0.0f;
    Fail(CublasStatus(cublasLtMatmul(lt_, plan->op, &alpha, w.data, plan->a, b, plan->b, &beta,
                                     out.data, plan->c, out.data, plan->c, &plan->heuristic.algo,
                                     lt_workspace_.get(), lt_workspace_.size(), s()),
                      "cublasLtMatmul"));
  }

  GemmPlan* Plan(ElemType t, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                 int64_t ldc) {
    const auto key = std::make_tuple(static_cast<int>(t), m, n, k, lda, ldb, ldc);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second.get();
    auto plan = std::make_unique<GemmPlan>();
    const cudaDataType_t ab = CudaType(t);
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    absl::Status st =
        CublasStatus(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                     "cublasLtMatmulDescCreate");
    if (st.ok()) {
      st = CublasStatus(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                       &trans_a, sizeof(trans_a)),
                        "TRANSA");
    }
    if (st.ok()) {
      st = CublasStatus(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                       &trans_b, sizeof(trans_b)),
                        "TRANSB");
    }
    if (st.ok()) {
      st = CublasStatus(cublasLtMatrixLayoutCreate(&plan->a, ab, k, m, lda), "layout A");
    }
    if (st.ok()) {
      st = CublasStatus(cublasLtMatrixLayoutCreate(&plan->b, ab, k, n, ldb), "layout B");
    }
    if (st.ok()) {
      st = CublasStatus(cublasLtMatrixLayoutCreate(&plan->c, CUDA_R_32F, m, n, ldc), "layout C");
    }
    cublasLtMatmulPreference_t pref = nullptr;
    if (st.ok()) st = CublasStatus(cublasLtMatmulPreferenceCreate(&pref), "preference");
    if (st.ok()) {
      const size_t ws = lt_workspace_.size();
      st = CublasStatus(cublasLtMatmulPreferenceSetAttribute(
                            pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
                        "workspace preference");
    }
    if (st.ok()) {
      int found = 0;
      st = CublasStatus(cublasLtMatmulAlgoGetHeuristic(lt_, plan->op, plan->a, plan->b, plan->c,
                                                       plan->c, pref, 1, &plan->heuristic, &found),
                        "cublasLtMatmulAlgoGetHeuristic");
      if (st.ok() && found == 0) {
        st = absl::UnimplementedError(
            absl::StrCat("cuBLASLt has no algorithm for m=", m, " n=", n, " k=", k));
      }
    }
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    if (!st.ok()) {
      Fail(Annotate(st, "MatMul"));
      return nullptr;
    }
    return (plans_[key] = std::move(plan)).get();
  }

  const CudaDeviceInfo info_;
  const std::string name_;
  std::shared_ptr<MemoryBudget> budget_;
  CudaStream stream_;
  cublasLtHandle_t lt_ = nullptr;
  DeviceMemory lt_workspace_;
  std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>,
           std::unique_ptr<GemmPlan>>
      plans_;
  absl::Status error_;  // the first failure; sticky
  HostArrayCache ids_cache_, positions_cache_, inv_freq_cache_, attn_index_cache_;
  HostArrayCache sample_params_cache_, sample_pairs_cache_;
  std::vector<int32_t> attn_index_;
  DeviceMemory act_scratch_, attn_scratch_, sample_f32_, sample_f64_, sample_out_;
};

CudaBackend* AsCuda(Backend& backend) { return dynamic_cast<CudaBackend*>(&backend); }

}  // namespace

absl::StatusOr<CudaDeviceInfo> DescribeCudaDevice(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    const absl::Status st = err != cudaSuccess ? CudaStatus(err, "cudaGetDeviceCount")
                                               : absl::UnavailableError("no CUDA device");
    return absl::UnavailableError(absl::StrCat("no usable CUDA GPU (", st.message(),
                                               "); the CPU backend (--backend cpu) needs none"));
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist (", count, " present)"));
  }
  cudaDeviceProp prop{};
  RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  size_t free_bytes = 0, total_bytes = 0;
  RETURN_IF_ERROR(CudaStatus(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo"));
  CudaDeviceInfo info;
  info.device = device;
  info.name = prop.name;
  {
    const auto* u = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
    std::string hex;
    for (int i = 0; i < 16; ++i) {
      if (i == 4 || i == 6 || i == 8 || i == 10) hex += '-';
      absl::StrAppend(&hex, absl::Hex(u[i], absl::kZeroPad2));
    }
    info.uuid = "GPU-" + hex;
  }
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.total_bytes = static_cast<int64_t>(total_bytes);
  info.free_bytes = static_cast<int64_t>(free_bytes);
  return info;
}

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const CudaBackendOptions& options) {
  if (!(options.memory_fraction > 0.0 && options.memory_fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU memory fraction ", options.memory_fraction, " is not in (0, 1]"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> b, CudaBackend::Create(options));
  return std::unique_ptr<Backend>(std::move(b));
}

int64_t CudaBackendFreeBytes(const Backend& backend) {
  const auto* b = dynamic_cast<const CudaBackend*>(&backend);
  CHECK(b != nullptr);
  return b->FreeBytes();
}

absl::StatusOr<std::vector<SampleResult>> SampleOnDevice(
    Backend& backend, const Tensor& logits, absl::Span<const SamplingParams> params,
    absl::Span<const int64_t> positions, absl::Span<const absl::Span<const int32_t>> histories) {
  CudaBackend* b = AsCuda(backend);
  if (b == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleOnDevice needs the CUDA backend, got ", backend.name()));
  }
  return b->Sample(logits, params, positions, histories);
}

}  // namespace shardserve
