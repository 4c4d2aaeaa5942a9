// The compute interface that model architectures are written against.
//
// A Backend owns device memory and runs ops on it. Activations are F32 row-major
// [rows, cols] matrices; weights may be F32, F16 or BF16 ([out, in], as nn.Linear stores them).
// Index arrays (token ids, positions, block tables) are host memory: a device backend copies
// them as it needs. Buffer contents may live in device memory: callers move data in and out only
// through CopyToDevice / CopyToHost / CopyOnDevice / Fill, never by dereferencing data().
//
// Ownership: Buffers are owned by whoever allocated them and freed by their destructor. Tensors
// are non-owning views.
//
// Threading: one Backend serves one stage. Ops are issued from one thread at a time, in order;
// a backend may parallelise each op internally (the CPU backend uses its ThreadPool). Ops
// complete before they return on the CPU backend; a device backend may queue them and must
// finish them by Synchronize().
//
// Callers ask SupportsOp() rather than assume; CPU supports every op for F32/F16/BF16 weights.
#ifndef SHARDSERVE_KERNELS_BACKEND_H_
#define SHARDSERVE_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"

namespace shardserve {

// A non-owning 2-D view: rows x cols elements of `dtype`, rows `stride` elements apart.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;  // elements between row starts; == cols when contiguous
  // The same matrix in a layout the backend made for its matmul kernels (PackForMatMul), or
  // null. A view of rows (Rows) has none.
  const void* packed = nullptr;

  static Tensor Of(void* data, DType dtype, int64_t rows, int64_t cols) {
    return Tensor{data, dtype, rows, cols, cols};
  }
  float* f32() const { return static_cast<float*>(data); }
  float* row(int64_t r) const { return f32() + r * stride; }
  Tensor Rows(int64_t begin, int64_t count) const {
    return Tensor{static_cast<char*>(data) + begin * RowBytes(dtype, stride), dtype, count, cols,
                  stride};
  }
};

class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() = 0;
  virtual size_t size() const = 0;
};

enum class Op {
  kEmbedding,
  kRmsNorm,
  kMatMul,
  kRope,
  kPagedAttention,
  kSwiGlu,
  kAdd,
};

// Sequences of one step, for attention. Token rows of a step are grouped by sequence:
// sequence i owns rows [row_begin, row_begin + num_tokens), at positions
// start_pos .. start_pos + num_tokens - 1; its keys and values for positions
// [0, start_pos + num_tokens) live in the blocks of block_table (block b holds positions
// [b * block_size, (b + 1) * block_size)).
struct AttentionSeq {
  int64_t row_begin = 0;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  absl::Span<const int32_t> block_table;
};

// One layer's paged K/V pool: [num_blocks, block_size, num_kv_heads, head_dim], F32.
struct KvLayer {
  float* k = nullptr;
  float* v = nullptr;
};

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 16;
  int64_t num_blocks = 0;
};

// The device a backend computes on, for Describe (placement and link choice).
struct DeviceInfo {
  std::string uuid;          // GPU-xxxxxxxx-... on CUDA; empty on the CPU
  uint64_t total_bytes = 0;  // 0: the host's memory (the caller reads it)
  uint64_t free_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual absl::string_view name() const = 0;
  virtual DeviceInfo device_info() const { return {}; }
  virtual bool SupportsOp(Op op, DType weight_dtype) const = 0;

  virtual absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) = 0;
  // Makes `bytes` of host data usable as weights by this backend. The CPU backend may return a
  // view of the host memory (no copy) when `host` outlives the stage.
  virtual absl::StatusOr<std::unique_ptr<Buffer>> UploadWeights(const void* host, size_t bytes) = 0;
  virtual absl::Status Synchronize() = 0;
  // OK while the backend can compute. After a failure it cannot recover from (a sticky CUDA
  // error such as an illegal address, a lost device), that failure: every later op fails the
  // same way, and only a new process computes again. Cheap; never waits for queued work. Called
  // between steps, by the issuing thread.
  virtual absl::Status Health() { return absl::OkStatus(); }
  // Matmul weights `w` (a whole matrix, in host memory or this backend's) in a layout this
  // backend's kernels read faster, e.g. rows interleaved for SIMD lanes, or null when it has none
  // for w's type and shape. The caller keeps the buffer as long as it uses w and sets w.packed to
  // its data; MatMul then reads only that.
  virtual absl::StatusOr<std::unique_ptr<Buffer>> PackForMatMul(const Tensor& w) {
    (void)w;
    return std::unique_ptr<Buffer>();
  }

  // Host <-> backend memory. `device` (and `dst`/`src` of CopyOnDevice) point into Buffers of
  // this backend; `host` is ordinary host memory. On the CPU backend these are memcpy / memset.
  // CopyToDevice is queued like an op but has read `host` when it returns, so the caller may
  // reuse `host` at once. CopyToHost waits for every queued op, then copies; its status carries
  // any failure of those ops. Fill sets `bytes` bytes to `byte` (0 to clear KV pages).
  virtual void CopyToDevice(void* device, const void* host, size_t bytes) = 0;
  virtual absl::Status CopyToHost(void* host, const void* device, size_t bytes) = 0;
  virtual void CopyOnDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void Fill(void* device, uint8_t byte, size_t bytes) = 0;

  // out[i, :] = table[ids[i], :] (converted to F32). Ids are validated by the caller.
  virtual void Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor out) = 0;
  // out = x / rms(x) * weight, row-wise. out may alias x.
  virtual void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) = 0;
  // out[n, m] = x[n, k] * w[m, k]^T (+ bias[m]). x, out F32; w F32/F16/BF16; bias F32 or null.
  virtual void MatMul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) = 0;
  // Rotates pairs (i, i + head_dim/2) of every head of x [n, heads * head_dim] in place
  // (Hugging Face rotate_half convention), by positions[r] * inv_freq[i].
  virtual void Rope(Tensor x, int64_t head_dim, absl::Span<const int32_t> positions,
                    absl::Span<const float> inv_freq) = 0;
  // Writes k, v [n, kv_heads * head_dim] into the cache, then computes causal attention of q
  // [n, heads * head_dim] over each sequence's cache into out [n, heads * head_dim].
  virtual void PagedAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                              absl::Span<const AttentionSeq> seqs, const AttentionShape& shape,
                              KvLayer cache, Tensor out) = 0;
  // out[r, j] = silu(gate_up[r, j]) * gate_up[r, inter + j] where gate_up is [n, 2 * inter].
  virtual void SwiGlu(const Tensor& gate_up, Tensor out) = 0;
  // x += y.
  virtual void Add(Tensor x, const Tensor& y) = 0;
};

struct CpuBackendOptions {
  int threads = 0;         // 0: all online CPUs
  bool reference = false;  // plain scalar kernels only (the reference path)
  bool avx512 = true;      // use AVX-512 kernels where the CPU has them (else AVX2 only)
  // BF16 weights through AVX512-BF16 dot products where the CPU has them (prefill GEMM and
  // decode GEMV): activations rounded to BF16 (as on a GPU, and in llama.cpp), twice the
  // multiply-adds per instruction and no widening; false keeps activations F32.
  bool avx512_bf16 = true;
  // Copy large weight matrices into huge-page memory instead of reading the file mapping in
  // place: faster decode, at the cost of load time and a second copy while the page cache
  // holds the file.
  bool copy_weights = true;
};

std::unique_ptr<Backend> NewCpuBackend(const CpuBackendOptions& options);

}  // namespace shardserve

#endif  // SHARDSERVE_KERNELS_BACKEND_H_
