// The CPU backend: every op on host memory, split across one ThreadPool. Large-batch matmuls
// (prefill) go to OpenBLAS sgemm, one single-threaded call per thread on its own column panel,
// with 16-bit weights widened panel by panel; small batches (decode) use the GEMV kernels,
// which stream the weights once in their stored dtype.
#include <cblas.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/quant.h"

namespace shardserve {
namespace {

// Batches of at least this many rows take the GEMM path.
constexpr int64_t kGemmMinRows = 12;
// Prompt chunks of this many rows or more attend in tiles of kAttentionTile rows through the
// blocked GEMM (AVX-512); shorter ones, and decode rows, one row at a time.
constexpr int64_t kTiledAttentionRows = 16;
constexpr int64_t kAttentionTile = 64;
// Weight rows widened to F32 per sgemm call on the GEMM path.
constexpr int64_t kPanelRows = 512;

class HostBuffer : public Buffer {
 public:
  explicit HostBuffer(size_t bytes) : size_(bytes) {
    data_ = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) & ~size_t{63}));
  }
  ~HostBuffer() override { std::free(data_); }
  void* data() override { return data_; }
  size_t size() const override { return size_; }
  bool ok() const { return data_ != nullptr; }

 private:
  void* data_;
  size_t size_;
};

class HugePageBuffer : public Buffer {
 public:
  explicit HugePageBuffer(size_t bytes) : size_(bytes) {
    constexpr size_t kHuge = 2u << 20;
    mapped_ = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data_ = p == MAP_FAILED ? nullptr : p;
    if (data_ != nullptr) madvise(data_, mapped_, MADV_HUGEPAGE);
  }
  ~HugePageBuffer() override {
    if (data_ != nullptr) munmap(data_, mapped_);
  }
  void* data() override { return data_; }
  size_t size() const override { return size_; }
  bool ok() const { return data_ != nullptr; }

 private:
  void* data_;
  size_t size_;
  size_t mapped_;
};

class HostView : public Buffer {
 public:
  HostView(const void* data, size_t size) : data_(const_cast<void*>(data)), size_(size) {}
  void* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_;
  size_t size_;
};

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& o)
      : pool_(o.threads),
        fast_(!o.reference && cpu::CpuHasAvx2Fma()),
        avx512_(fast_ && o.avx512 && cpu::CpuHasAvx512()),
        bf16_dot_(avx512_ && o.avx512_bf16 && cpu::CpuHasAvx512Bf16()),
        vnni_(avx512_ && cpu::CpuHasAvxVnni()),
        vnni512_(avx512_ && cpu::CpuHasAvx512Vnni()),
        copy_weights_(o.copy_weights) {
    // Parallelism comes from our pool; each sgemm call runs on the thread that makes it.
    openblas_set_num_threads(1);
  }

  absl::string_view name() const override {
    return avx512_ ? "cpu-avx512" : fast_ ? "cpu-avx2" : "cpu-reference";
  }

  bool SupportsOp(Op op, DType weight_dtype) const override { return weight_dtype != DType::kI32; }

  // Q4_0, IQ4_NL, Q4_K and Q6_K matrices with AVX-512 VNNI: rows interleaved 16 at a time
  // (cpu::RepackedFormat), read by decode and prefill alike; the file's layout is then never read
  // again. Not when weights are to be read from the file mapping in place (copy_weights false:
  // no second copy).
  absl::StatusOr<std::unique_ptr<Buffer>> PackForMatMul(const Tensor& w) override {
    const cpu::Repacked* f = cpu::RepackedFormat(w.dtype, w.cols);
    if (!vnni512_ || !copy_weights_ || f == nullptr || w.rows % 16 != 0 || w.stride != w.cols) {
      return std::unique_ptr<Buffer>();
    }
    const size_t group_bytes = f->group_bytes(w.cols);
    ASSIGN_OR_RETURN(std::unique_ptr<Buffer> packed, Allocate(group_bytes * (w.rows / 16)));
    const size_t row_bytes = RowBytes(w.dtype, w.cols);
    const auto* src = static_cast<const uint8_t*>(w.data);
    auto* dst = static_cast<uint8_t*>(packed->data());
    pool_.ParallelFor(w.rows / 16, 1, [&](int64_t g0, int64_t g1) {
      f->repack(src + g0 * 16 * row_bytes, (g1 - g0) * 16, w.cols, dst + g0 * group_bytes);
    });
    return packed;
  }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    if (bytes >= (4u << 20)) {  // weights (quantized at load), KV pools: huge pages
      auto b = std::make_unique<HugePageBuffer>(bytes);
      if (!b->ok())
        return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
      return std::unique_ptr<Buffer>(std::move(b));
    }
    auto b = std::make_unique<HostBuffer>(bytes);
    if (!b->ok()) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    }
    return std::unique_ptr<Buffer>(std::move(b));
  }

  absl::StatusOr<std::unique_ptr<Buffer>> UploadWeights(const void* host, size_t bytes) override {
    if (!copy_weights_ || bytes < (1u << 20)) {
      return std::unique_ptr<Buffer>(std::make_unique<HostView>(host, bytes));
    }
    // Large matrices move to anonymous memory backed by transparent huge pages: decode streams
    // every weight once per token, and 4 KiB file pages cost a TLB miss every few rows.
    auto b = std::make_unique<HugePageBuffer>(bytes);
    if (!b->ok())
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    std::memcpy(b->data(), host, bytes);
    return std::unique_ptr<Buffer>(std::move(b));
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  void CopyToDevice(void* device, const void* host, size_t bytes) override {
    std::memcpy(device, host, bytes);
  }
  absl::Status CopyToHost(void* host, const void* device, size_t bytes) override {
    std::memcpy(host, device, bytes);
    return absl::OkStatus();
  }
  void CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    std::memmove(dst, src, bytes);
  }
  void Fill(void* device, uint8_t byte, size_t bytes) override { std::memset(device, byte, bytes); }

  void Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor out) override {
    for (size_t i = 0; i < ids.size(); ++i) {
      const char* src = static_cast<const char*>(table.data) +
                        static_cast<int64_t>(ids[i]) * RowBytes(table.dtype, table.stride);
      Convert(src, table.dtype, table.cols, out.row(static_cast<int64_t>(i)));
    }
  }

  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    const float* w = weight.f32();
    pool_.ParallelFor(
        x.rows, 1,
        [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const float* in = x.row(r);
            float* o = out.row(r);
            float ss = 0.0f;
            for (int64_t c = 0; c < x.cols; ++c) ss += in[c] * in[c];
            const float scale = 1.0f / std::sqrt(ss / static_cast<float>(x.cols) + eps);
            for (int64_t c = 0; c < x.cols; ++c) o[c] = w[c] * (in[c] * scale);
          }
        },
        pool_.ThreadsFor(x.rows * x.cols * 4));
  }

  void MatMul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override {
    cpu::GemvArgs args{x.f32(),
                       x.rows,
                       x.stride,
                       w.data,
                       w.dtype,
                       w.cols,
                       bias != nullptr ? bias->f32() : nullptr,
                       out.f32(),
                       out.stride,
                       w.rows,
                       w.packed};
    const int threads = pool_.ThreadsFor(x.rows * w.rows * w.cols);
    if (IsQuantized(w.dtype)) return QuantMatMul(args, threads);
    if (!fast_) {
      pool_.ParallelFor(
          w.rows, 4, [&](int64_t j0, int64_t j1) { cpu::RefGemvRows(args, j0, j1); }, threads);
      return;
    }
    if (x.rows == 1 && bf16_dot_ && w.dtype == DType::kBF16) {
      pool_.ParallelFor(
          w.rows, 8, [&](int64_t j0, int64_t j1) { cpu::Avx512Bf16GemvRows1(args, j0, j1); },
          threads);
      return;
    }
    if (x.rows == 1 && avx512_) {
      pool_.ParallelFor(
          w.rows, 8, [&](int64_t j0, int64_t j1) { cpu::Avx512GemvRows1(args, j0, j1); }, threads);
      return;
    }
    if (x.rows < kGemmMinRows && avx512_) {
      pool_.ParallelFor(
          w.rows, 8, [&](int64_t j0, int64_t j1) { cpu::Avx512GemvRowsSmallN(args, j0, j1); },
          threads);
      return;
    }
    if (x.rows < kGemmMinRows) {
      pool_.ParallelFor(
          w.rows, 4, [&](int64_t j0, int64_t j1) { cpu::Avx2GemvRows(args, j0, j1); }, threads);
      return;
    }
    // The blocked AVX-512 GEMMs: the activations are packed once, in parallel, then every thread
    // reads them (members, not thread_local: the worker threads read what the others packed).
    if (bf16_dot_ && w.dtype == DType::kBF16) {
      return PackedGemm(args, threads, cpu::Avx512Bf16GemmPackedWords(args),
                        &gemm_bf16_activations_, cpu::Avx512Bf16PackGemmActivations,
                        cpu::Avx512Bf16GemmRows);
    }
    if (avx512_) {  // F32, F16, BF16 (quantized weights went to QuantMatMul)
      return PackedGemm(args, threads, cpu::Avx512GemmPackedFloats(args), &gemm_activations_,
                        cpu::Avx512PackGemmActivations, cpu::Avx512GemmRows);
    }
    pool_.ParallelFor(
        w.rows, 16, [&](int64_t j0, int64_t j1) { GemmPanel(args, j0, j1); }, threads);
  }

  // One blocked GEMM over the pool: `pack` lays the activations out into *xp (`size` elements),
  // split by rows across the threads, then `rows` splits the weight rows.
  template <typename E>
  void PackedGemm(const cpu::GemvArgs& args, int threads, int64_t size, std::vector<E>* xp,
                  void (*pack)(const cpu::GemvArgs&, int64_t, int64_t, E*),
                  void (*rows)(const cpu::GemvArgs&, const E*, int64_t, int64_t)) {
    xp->resize(static_cast<size_t>(size));
    E* data = xp->data();
    pool_.ParallelFor(
        args.n, 16, [&](int64_t i0, int64_t i1) { pack(args, i0, i1, data); }, threads);
    pool_.ParallelFor(
        args.rows, 32, [&](int64_t j0, int64_t j1) { rows(args, data, j0, j1); }, threads);
  }

  // The blocked F32 GEMM on the calling thread (attention tiles), activations packed into *xp.
  static void GemmOnThisThread(const cpu::GemvArgs& args, std::vector<float>* xp) {
    xp->resize(static_cast<size_t>(cpu::Avx512GemmPackedFloats(args)));
    cpu::Avx512PackGemmActivations(args, 0, args.n, xp->data());
    cpu::Avx512GemmRows(args, xp->data(), 0, args.rows);
  }

  void Rope(Tensor x, int64_t head_dim, absl::Span<const int32_t> positions,
            absl::Span<const float> inv_freq) override {
    const int64_t half = head_dim / 2;
    const int64_t heads = x.cols / head_dim;
    pool_.ParallelFor(
        x.rows, 1,
        [&](int64_t r0, int64_t r1) {
          std::vector<float> cos_v(half), sin_v(half);
          for (int64_t r = r0; r < r1; ++r) {
            const float pos = static_cast<float>(positions[r]);
            for (int64_t i = 0; i < half; ++i) {
              const float angle = pos * inv_freq[i];
              cos_v[i] = std::cos(angle);
              sin_v[i] = std::sin(angle);
            }
            float* row = x.row(r);
            for (int64_t h = 0; h < heads; ++h) {
              float* v = row + h * head_dim;
              for (int64_t i = 0; i < half; ++i) {
                const float a = v[i], b = v[i + half];
                v[i] = a * cos_v[i] - b * sin_v[i];
                v[i + half] = b * cos_v[i] + a * sin_v[i];
              }
            }
          }
        },
        pool_.ThreadsFor(x.rows * x.cols * 16));
  }

  void PagedAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                      absl::Span<const AttentionSeq> seqs, const AttentionShape& shape,
                      KvLayer cache, Tensor out) override {
    const int64_t kv_width = shape.num_kv_heads * shape.head_dim;
    // 1. Store the new keys and values in their slots.
    for (const AttentionSeq& s : seqs) {
      for (int64_t t = 0; t < s.num_tokens; ++t) {
        const int64_t pos = s.start_pos + t;
        const int64_t slot =
            static_cast<int64_t>(s.block_table[pos / shape.block_size]) * shape.block_size +
            pos % shape.block_size;
        std::memcpy(cache.k + slot * kv_width, k.row(s.row_begin + t), kv_width * sizeof(float));
        std::memcpy(cache.v + slot * kv_width, v.row(s.row_begin + t), kv_width * sizeof(float));
      }
    }
    // 2. One work item per (prompt chunk, head) for chunks of kTiledAttentionRows rows or more
    // (with AVX-512), then one per (token row, head) for the rest.
    std::vector<const AttentionSeq*> tiled;
    std::vector<std::pair<const AttentionSeq*, int64_t>> row_seq;  // row -> (seq, t)
    row_seq.reserve(q.rows);
    int64_t max_len = 0, tiled_work = 0;
    for (const AttentionSeq& s : seqs) {
      if (avx512_ && s.num_tokens >= kTiledAttentionRows) {
        tiled.push_back(&s);
        tiled_work += s.num_tokens * (s.start_pos + s.num_tokens);
        continue;
      }
      for (int64_t t = 0; t < s.num_tokens; ++t) row_seq.emplace_back(&s, t);
      max_len = std::max(max_len, s.start_pos + s.num_tokens);
    }
    const int64_t group = shape.num_heads / shape.num_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
    const int64_t tiled_items = static_cast<int64_t>(tiled.size()) * shape.num_heads;
    const int64_t items = tiled_items + static_cast<int64_t>(row_seq.size()) * shape.num_heads;
    // Items go to the threads in turn, not in contiguous ranges: a prompt's later rows attend to
    // more positions, so contiguous ranges gave the last thread most of a prefill's work.
    const int threads = static_cast<int>(std::min<int64_t>(
        {static_cast<int64_t>(pool_.size()),
         pool_.ThreadsFor((items * max_len + tiled_work * shape.num_heads) * shape.head_dim),
         items}));
    auto work = [&](int thread) {
      std::vector<float> scores(max_len);
      std::vector<float> qs(shape.head_dim);
      TiledAttentionScratch scratch;
      for (int64_t item = thread; item < items; item += threads) {
        if (item < tiled_items) {
          TiledAttention(*tiled[item / shape.num_heads], item % shape.num_heads, q, shape, cache,
                         out, &scratch);
          continue;
        }
        const int64_t idx = (item - tiled_items) / shape.num_heads;
        const int64_t h = item % shape.num_heads;
        const auto [seq, t] = row_seq[idx];
        const int64_t row = seq->row_begin + t;
        const float* qh = q.row(row) + h * shape.head_dim;
        for (int64_t d = 0; d < shape.head_dim; ++d) qs[d] = qh[d] * scale;
        const int64_t g = h / group;
        cpu::AttentionArgs a{qs.data(),
                             cache.k + g * shape.head_dim,
                             cache.v + g * shape.head_dim,
                             kv_width,
                             seq->block_table.data(),
                             shape.block_size,
                             shape.head_dim,
                             seq->start_pos + t + 1,
                             scores.data(),
                             out.row(row) + h * shape.head_dim};
        if (fast_) {
          cpu::Avx2AttentionHead(a);
        } else {
          cpu::RefAttentionHead(a);
        }
      }
    };
    if (threads <= 1) return work(0);
    pool_.Run([&](int thread, int) {
      if (thread < threads) work(thread);
    });
  }

  // Scratch of TiledAttention, per thread.
  struct TiledAttentionScratch {
    std::vector<float> k, vt, scores, xp;
  };

  // Causal attention of prompt chunk `s` for head h as two blocked GEMMs per tile of
  // kAttentionTile query rows: scores = Q K^T over the keys the tile's last row sees, a softmax
  // per row over the keys it may see (the rest zero), then scores x V. Keys and values are
  // gathered from their pages once per tile (the values transposed, as the GEMM's weight rows).
  void TiledAttention(const AttentionSeq& s, int64_t h, const Tensor& q,
                      const AttentionShape& shape, KvLayer cache, Tensor out,
                      TiledAttentionScratch* sc) {
    const int64_t hd = shape.head_dim, kvw = shape.num_kv_heads * hd;
    const int64_t g = h / (shape.num_heads / shape.num_kv_heads);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    auto slot = [&](int64_t pos) {
      return static_cast<int64_t>(s.block_table[pos / shape.block_size]) * shape.block_size +
             pos % shape.block_size;
    };
    const int64_t total = s.start_pos + s.num_tokens;
    sc->k.resize(static_cast<size_t>(total * hd));
    for (int64_t pos = 0; pos < total; ++pos) {
      std::memcpy(&sc->k[pos * hd], cache.k + slot(pos) * kvw + g * hd, hd * sizeof(float));
    }
    for (int64_t i0 = 0; i0 < s.num_tokens; i0 += kAttentionTile) {
      const int64_t rows = std::min(kAttentionTile, s.num_tokens - i0);
      const int64_t keys = s.start_pos + i0 + rows;
      sc->scores.resize(static_cast<size_t>(rows * keys));
      const cpu::GemvArgs qk{q.row(s.row_begin + i0) + h * hd,
                             rows,
                             q.stride,
                             sc->k.data(),
                             DType::kF32,
                             hd,
                             nullptr,
                             sc->scores.data(),
                             keys,
                             keys};
      GemmOnThisThread(qk, &sc->xp);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = &sc->scores[r * keys];
        const int64_t len = s.start_pos + i0 + r + 1;
        cpu::Avx2SoftmaxRow(row, len, scale);
        std::fill(row + len, row + keys, 0.0f);
      }
      sc->vt.resize(static_cast<size_t>(hd * keys));
      for (int64_t pos = 0; pos < keys; ++pos) {
        const float* v = cache.v + slot(pos) * kvw + g * hd;
        for (int64_t d = 0; d < hd; ++d) sc->vt[d * keys + pos] = v[d];
      }
      const cpu::GemvArgs pv{sc->scores.data(), rows, keys,    sc->vt.data(),
                             DType::kF32,       keys, nullptr, out.row(s.row_begin + i0) + h * hd,
                             out.stride,        hd};
      GemmOnThisThread(pv, &sc->xp);
    }
  }

  void SwiGlu(const Tensor& gate_up, Tensor out) override {
    const int64_t inter = out.cols;
    pool_.ParallelFor(
        out.rows, 1,
        [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const float* g = gate_up.row(r);
            const float* u = g + inter;
            float* o = out.row(r);
            for (int64_t j = 0; j < inter; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
          }
        },
        pool_.ThreadsFor(out.rows * out.cols * 16));
  }

  void Add(Tensor x, const Tensor& y) override {
    for (int64_t r = 0; r < x.rows; ++r) {
      float* a = x.row(r);
      const float* b = y.row(r);
      for (int64_t c = 0; c < x.cols; ++c) a[c] += b[c];
    }
  }

 private:
  void Convert(const void* src, DType dt, int64_t n, float* dst) {
    if (IsQuantized(dt)) {
      cpu::DequantizeRow(dt, src, n, dst);
    } else if (fast_) {
      cpu::Avx2ConvertRows(src, dt, n, 0, 1, dst);
    } else {
      cpu::RefConvertRows(src, dt, n, 0, 1, dst);
    }
  }

  // Decode: activations quantized to Q8 blocks, integer block dot products (Q8_0 / Q4_0 /
  // IQ4_NL everywhere, Q5_0 / Q5_1 and the K-quants with AVX2; all of them with AVX-512 VNNI where
  // the CPU has it). Prefill is an int8 GEMM with AVX-512 VNNI (QuantGemm), else widened weight
  // panels for sgemm.
  void QuantMatMul(const cpu::GemvArgs& a, int threads) {
    if (a.packed != nullptr) {  // repacked at load (PackForMatMul): decode and prefill
      const std::vector<cpu::Q8Block>& xq = QuantizeActivationRows(a, threads);
      const auto* packed = static_cast<const uint8_t*>(a.packed);
      const auto rows = cpu::RepackedFormat(a.wt, a.k)->rows;
      pool_.ParallelFor(
          a.rows, 16,
          [&](int64_t j0, int64_t j1) {
            rows(packed, a.k, xq.data(), a.n, a.k / 32, a.bias, a.out, a.out_stride, j0, j1);
          },
          threads);
      return;
    }
    const bool kquant = a.wt == DType::kQ4_K || a.wt == DType::kQ5_K || a.wt == DType::kQ6_K;
    const bool q5 = a.wt == DType::kQ5_0 || a.wt == DType::kQ5_1;
    const bool int_dot = a.wt == DType::kQ8_0 || a.wt == DType::kQ4_0 || a.wt == DType::kIQ4_NL ||
                         ((kquant || q5) && fast_);
    if (vnni512_ && a.n >= kGemmMinRows) return QuantGemm(a, threads);
    if (!int_dot || (fast_ && a.n >= kGemmMinRows)) {
      pool_.ParallelFor(
          a.rows, 16, [&](int64_t j0, int64_t j1) { GemmPanel(a, j0, j1); }, threads);
      return;
    }
    const int64_t nb = a.k / 32;
    const std::vector<cpu::Q8Block>& xq = QuantizeActivationRows(a, threads);
    const size_t row_bytes = RowBytes(a.wt, a.k);
    pool_.ParallelFor(
        a.rows, 4,
        [&](int64_t j0, int64_t j1) {
          if (vnni512_) {
            cpu::Avx512VnniQuantGemvRows(a.wt, a.w, a.k, xq.data(), a.n, nb, a.bias, a.out,
                                         a.out_stride, j0, j1);
            return;
          }
          if (kquant) {
            cpu::Avx2KQuantGemvRows(a.wt, a.w, a.k, xq.data(), a.n, nb, a.bias, a.out, a.out_stride,
                                    j0, j1);
            return;
          }
          if (q5) {
            cpu::Avx2Q5GemvRows(a.wt, a.w, a.k, xq.data(), a.n, nb, a.bias, a.out, a.out_stride, j0,
                                j1);
            return;
          }
          if (vnni_ && a.n == 1 && (a.wt == DType::kQ8_0 || a.wt == DType::kQ4_0)) {
            cpu::VnniQuantGemvRows1(a.wt, a.w, a.k, xq.data(), a.bias, a.out, j0, j1);
            return;
          }
          if (fast_) {
            cpu::Avx2QuantGemvRows(a.wt, a.w, a.k, xq.data(), a.n, nb, a.bias, a.out, a.out_stride,
                                   j0, j1);
            return;
          }
          for (int64_t j = j0; j < j1; ++j) {
            const void* row = static_cast<const uint8_t*>(a.w) + j * row_bytes;
            for (int64_t i = 0; i < a.n; ++i) {
              a.out[i * a.out_stride + j] = cpu::RefQuantDot(a.wt, row, &xq[i * nb], a.k) +
                                            (a.bias != nullptr ? a.bias[j] : 0.0f);
            }
          }
        },
        threads);
  }

  // a.n activation rows as Q8 blocks (k / 32 per row), the rows split across the threads. A
  // member, not thread_local: the worker threads read the caller's blocks.
  const std::vector<cpu::Q8Block>& QuantizeActivationRows(const cpu::GemvArgs& a, int threads) {
    const int64_t nb = a.k / 32;
    std::vector<cpu::Q8Block>& xq = activation_blocks_;
    xq.resize(static_cast<size_t>(a.n * nb));
    pool_.ParallelFor(
        a.n, 1,
        [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            cpu::QuantizeActivations(a.x + i * a.x_stride, a.k, &xq[i * nb]);
          }
        },
        threads);
    return xq;
  }

  // Prefill with AVX-512 VNNI: the activations quantized to Q8 blocks, then an int8 GEMM over
  // panels of 16 weight rows.
  void QuantGemm(const cpu::GemvArgs& a, int threads) {
    const int64_t nb = a.k / 32;
    const std::vector<cpu::Q8Block>& xq = QuantizeActivationRows(a, threads);
    pool_.ParallelFor(
        a.rows, 16,
        [&](int64_t j0, int64_t j1) {
          cpu::Avx512VnniQuantGemmRows(a.wt, a.w, a.k, xq.data(), a.n, nb, a.bias, a.out,
                                       a.out_stride, j0, j1);
        },
        threads);
  }

  // Output columns [j0, j1) through sgemm; 16-bit weights are widened kPanelRows at a time.
  static void GemmPanel(const cpu::GemvArgs& a, int64_t j0, int64_t j1) {
    if (a.wt == DType::kF32) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(a.n),
                  static_cast<int>(j1 - j0), static_cast<int>(a.k), 1.0f, a.x,
                  static_cast<int>(a.x_stride), static_cast<const float*>(a.w) + j0 * a.k,
                  static_cast<int>(a.k), 0.0f, a.out + j0, static_cast<int>(a.out_stride));
    } else {
      thread_local std::vector<float> panel;
      panel.resize(static_cast<size_t>(kPanelRows * a.k));
      for (int64_t p = j0; p < j1; p += kPanelRows) {
        const int64_t pe = std::min(j1, p + kPanelRows);
        if (IsQuantized(a.wt)) {
          const size_t row_bytes = RowBytes(a.wt, a.k);
          for (int64_t r = p; r < pe; ++r) {
            cpu::DequantizeRow(a.wt, static_cast<const uint8_t*>(a.w) + r * row_bytes, a.k,
                               panel.data() + (r - p) * a.k);
          }
        } else {
          cpu::Avx2ConvertRows(a.w, a.wt, a.k, p, pe, panel.data());
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(a.n),
                    static_cast<int>(pe - p), static_cast<int>(a.k), 1.0f, a.x,
                    static_cast<int>(a.x_stride), panel.data(), static_cast<int>(a.k), 0.0f,
                    a.out + p, static_cast<int>(a.out_stride));
      }
    }
    if (a.bias != nullptr) {
      for (int64_t i = 0; i < a.n; ++i) {
        for (int64_t j = j0; j < j1; ++j) a.out[i * a.out_stride + j] += a.bias[j];
      }
    }
  }

  ThreadPool pool_;
  const bool fast_;
  const bool avx512_;
  const bool bf16_dot_;  // BF16 weights on AVX512-BF16 (decode GEMV and prefill GEMM)
  const bool vnni_;      // AVX-VNNI integer dot products (with the other wide-vector paths)
  const bool vnni512_;   // AVX-512 VNNI: every quantized product, decode GEMV and prefill GEMM
  const bool copy_weights_;
  std::vector<cpu::Q8Block> activation_blocks_;
  std::vector<float> gemm_activations_;          // prefill activations laid out for Avx512GemmRows
  std::vector<uint32_t> gemm_bf16_activations_;  // the same as BF16 pairs, for Avx512Bf16GemmRows
};

}  // namespace

std::unique_ptr<Backend> NewCpuBackend(const CpuBackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace shardserve
