// Every fast CPU op against the plain reference op, with a tolerance scaled to the work done.
#include <cmath>
#include <numeric>
#include <random>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/kernels.h"

namespace shardserve {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> ToHalf(const std::vector<float>& v, DType dt) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = dt == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
  return h;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct MatMulCase {
  DType dtype;
  int64_t n, m, k;
  bool bias;
};

class MatMulTest : public ::testing::TestWithParam<MatMulCase> {};

TEST_P(MatMulTest, FastMatchesReference) {
  const MatMulCase c = GetParam();
  // F32 activations throughout (the BF16 dot-product path is tested below).
  auto fast = NewCpuBackend({.threads = 2, .avx512_bf16 = false});
  auto ref = NewCpuBackend({.threads = 2, .reference = true});
  ASSERT_NE(fast->name(), ref->name());
  std::vector<float> x = Random(c.n * c.k, 1);
  std::vector<float> wf = Random(c.m * c.k, 2, 0.05f);
  std::vector<uint16_t> wh = ToHalf(wf, c.dtype);
  std::vector<float> bias = Random(c.m, 3);
  void* wdata = c.dtype == DType::kF32 ? static_cast<void*>(wf.data()) : wh.data();
  Tensor w = Tensor::Of(wdata, c.dtype, c.m, c.k);
  Tensor xt = Tensor::Of(x.data(), DType::kF32, c.n, c.k);
  Tensor bt = Tensor::Of(bias.data(), DType::kF32, 1, c.m);
  std::vector<float> out_fast(c.n * c.m, NAN), out_ref(c.n * c.m, NAN);
  fast->MatMul(xt, w, c.bias ? &bt : nullptr, Tensor::Of(out_fast.data(), DType::kF32, c.n, c.m));
  ref->MatMul(xt, w, c.bias ? &bt : nullptr, Tensor::Of(out_ref.data(), DType::kF32, c.n, c.m));
  // Both sum the same products in F32, in different orders: error grows like sqrt(k) * eps.
  const float tol = 4e-6f * std::sqrt(static_cast<float>(c.k)) * 4.0f;
  EXPECT_LE(MaxAbsDiff(out_fast, out_ref), tol);
  for (float v : out_fast) ASSERT_TRUE(std::isfinite(v));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatMulTest,
    ::testing::Values(
        MatMulCase{DType::kF32, 1, 37, 64, false}, MatMulCase{DType::kF32, 3, 64, 172, true},
        MatMulCase{DType::kF32, 40, 130, 96, true}, MatMulCase{DType::kF16, 1, 33, 200, false},
        MatMulCase{DType::kF16, 5, 64, 64, true}, MatMulCase{DType::kF16, 64, 300, 128, false},
        MatMulCase{DType::kBF16, 1, 35, 72, true}, MatMulCase{DType::kBF16, 2, 17, 13, false},
        MatMulCase{DType::kBF16, 33, 257, 160, true},
        // Prefill tiles with edges everywhere: rows past
        // the last full tile, k past the last 16.
        MatMulCase{DType::kF16, 13, 70, 100, true}, MatMulCase{DType::kBF16, 19, 99, 37, false},
        // Three slices of k (the last ragged), panels
        // ending with 1, 2 and 3 vectors of rows, a
        // 16-row square holding 11 rows.
        MatMulCase{DType::kF16, 27, 117, 600, true}, MatMulCase{DType::kBF16, 20, 40, 272, false},
        MatMulCase{DType::kF16, 12, 16, 16, false}, MatMulCase{DType::kF32, 29, 100, 520, true},
        // Decode micro-batches of 2 to 11 rows (one weight row at a time against all of them):
        // k below one vector, k past the two-vector steps of 2-3 rows, 4 and 11 rows.
        MatMulCase{DType::kF32, 4, 21, 13, true}, MatMulCase{DType::kF32, 11, 50, 300, false},
        MatMulCase{DType::kF16, 2, 40, 520, true}, MatMulCase{DType::kF16, 7, 33, 129, false},
        MatMulCase{DType::kBF16, 3, 19, 280, true}, MatMulCase{DType::kBF16, 10, 64, 768, true}));

// BF16 weights on AVX512-BF16 (prefill GEMM, decode GEMV): the activations are rounded to BF16 and
// every product is exact in F32, so the result is the reference's on the rounded activations up to
// the order of the F32 sums. Shapes with an odd k, k past one slice, panels of 1 to 3 vectors, rows
// past the last full tile, a bias, and activation rows a stride apart.
TEST(CpuBackendTest, Bf16DotProductsAreTheReferenceOnRoundedActivations) {
  if (!cpu::CpuHasAvx512() || !cpu::CpuHasAvx512Bf16()) GTEST_SKIP() << "no AVX512-BF16";
  auto fast = NewCpuBackend({.threads = 2});
  auto ref = NewCpuBackend({.threads = 2, .reference = true});
  struct Shape {
    int64_t n, m, k;
    bool bias;
  };
  for (const Shape& c :
       {Shape{12, 48, 32, false}, Shape{13, 70, 101, true}, Shape{27, 117, 600, true},
        Shape{40, 130, 257, false}, Shape{19, 99, 37, true}, Shape{64, 300, 128, false},
        // Decode (one row, the GEMV): odd k, a masked tail of pairs.
        Shape{1, 35, 72, true}, Shape{1, 17, 13, false}, Shape{1, 300, 1000, true}}) {
    SCOPED_TRACE(testing::Message() << c.n << " x " << c.m << " x " << c.k);
    const int64_t stride = c.k + 3;
    std::vector<float> x = Random(c.n * stride, 11);
    std::vector<float> rounded(x.size());
    for (size_t i = 0; i < x.size(); ++i) rounded[i] = Bf16ToF32(F32ToBf16(x[i]));
    std::vector<uint16_t> w = ToHalf(Random(c.m * c.k, 12, 0.05f), DType::kBF16);
    std::vector<float> bias = Random(c.m, 13);
    Tensor wt = Tensor::Of(w.data(), DType::kBF16, c.m, c.k);
    Tensor bt = Tensor::Of(bias.data(), DType::kF32, 1, c.m);
    const Tensor* b = c.bias ? &bt : nullptr;
    std::vector<float> got(c.n * c.m, NAN), want(c.n * c.m, NAN), f32(c.n * c.m, NAN);
    fast->MatMul(Tensor{x.data(), DType::kF32, c.n, c.k, stride}, wt, b,
                 Tensor::Of(got.data(), DType::kF32, c.n, c.m));
    ref->MatMul(Tensor{rounded.data(), DType::kF32, c.n, c.k, stride}, wt, b,
                Tensor::Of(want.data(), DType::kF32, c.n, c.m));
    ref->MatMul(Tensor{x.data(), DType::kF32, c.n, c.k, stride}, wt, b,
                Tensor::Of(f32.data(), DType::kF32, c.n, c.m));
    EXPECT_LE(MaxAbsDiff(got, want), 4e-6f * std::sqrt(static_cast<float>(c.k)) * 4.0f);
    // Against unrounded activations it differs by what rounding them costs, no more.
    EXPECT_LE(MaxAbsDiff(got, f32), 0.01f * std::sqrt(static_cast<float>(c.k)) * 0.05f);
  }
}

// Prefill and decode micro-batches read activation rows a stride apart (a view of a wider
// buffer).
TEST(CpuBackendTest, PrefillTilesReadStridedRows) {
  for (const int64_t n : {int64_t{5}, int64_t{21}}) {
    const int64_t m = 50, k = 300, stride = 333;
    std::vector<float> wide = Random(n * stride, 6), dense(n * k);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < k; ++c) dense[r * k + c] = wide[r * stride + c];
    }
    std::vector<uint16_t> w = ToHalf(Random(m * k, 7, 0.05f), DType::kF16);
    auto fast = NewCpuBackend({.threads = 2});
    std::vector<float> a(n * m), b(n * m);
    fast->MatMul(Tensor{wide.data(), DType::kF32, n, k, stride},
                 Tensor::Of(w.data(), DType::kF16, m, k), nullptr,
                 Tensor::Of(a.data(), DType::kF32, n, m));
    fast->MatMul(Tensor::Of(dense.data(), DType::kF32, n, k),
                 Tensor::Of(w.data(), DType::kF16, m, k), nullptr,
                 Tensor::Of(b.data(), DType::kF32, n, m));
    EXPECT_EQ(a, b);
  }
}

TEST(CpuBackendTest, StridedOutputLeavesOtherColumnsAlone) {
  auto fast = NewCpuBackend({.threads = 2});
  for (int64_t n : {1, 6, 20}) {
    std::vector<float> x = Random(n * 16, 4), w = Random(8 * 16, 5);
    std::vector<float> out(n * 16, 7.0f);
    Tensor half{out.data(), DType::kF32, n, 8, 16};
    fast->MatMul(Tensor::Of(x.data(), DType::kF32, n, 16), Tensor::Of(w.data(), DType::kF32, 8, 16),
                 nullptr, half);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 8; c < 16; ++c) EXPECT_EQ(out[r * 16 + c], 7.0f);
      EXPECT_NE(out[r * 16], 7.0f);
    }
  }
}

// Head sizes 24 (the generic path), 64 and 128 (outputs held in registers), blocks of 4 with
// partly filled last blocks. The 70-row prompt chunk attends in tiles (two, the second of 6
// rows) through the GEMM where the CPU has AVX-512.
TEST(CpuBackendTest, PagedAttentionFastMatchesReference) {
  for (int64_t hd : {24, 64, 128}) {
    AttentionShape shape{
        .num_heads = 8, .num_kv_heads = 2, .head_dim = hd, .block_size = 4, .num_blocks = 32};
    const int64_t kvw = shape.num_kv_heads * shape.head_dim, qw = 8 * hd;
    // Four sequences: a prefill chunk continuing at position 5, a decode at 17, a fresh prompt,
    // and a long chunk continuing at position 9.
    std::vector<std::vector<int32_t>> tables = {{3, 9, 1, 0}, {4, 5, 6, 7, 8}, {31, 30}, {}};
    for (int32_t b = 29; b >= 10; --b) tables[3].push_back(b);
    std::vector<AttentionSeq> seqs = {
        {0, 6, 5, tables[0]}, {6, 1, 17, tables[1]}, {7, 5, 0, tables[2]}, {12, 70, 9, tables[3]}};
    const int64_t rows = 82;
    std::vector<float> q = Random(rows * qw, 6);
    std::vector<float> k = Random(rows * kvw, 7), v = Random(rows * kvw, 8);
    std::vector<float> out_fast(q.size()), out_ref(q.size());
    const size_t pool = shape.num_blocks * shape.block_size * kvw;
    // Positions before each sequence's start_pos already hold keys/values from earlier steps.
    std::vector<float> k_init = Random(pool, 9), v_init = Random(pool, 10);
    for (bool reference : {false, true}) {
      auto b = NewCpuBackend({.threads = 2, .reference = reference});
      std::vector<float> kc = k_init, vc = v_init;
      auto& out = reference ? out_ref : out_fast;
      b->PagedAttention(
          Tensor::Of(q.data(), DType::kF32, rows, qw), Tensor::Of(k.data(), DType::kF32, rows, kvw),
          Tensor::Of(v.data(), DType::kF32, rows, kvw), seqs, shape, KvLayer{kc.data(), vc.data()},
          Tensor::Of(out.data(), DType::kF32, rows, qw));
      // The new keys landed in their slots: sequence 1's token at position 17 -> block 8,
      // slot 1.
      EXPECT_EQ(kc[(8 * 4 + 1) * kvw], k[6 * kvw]);
    }
    EXPECT_LE(MaxAbsDiff(out_fast, out_ref), 1e-5f) << "head_dim " << hd;
    // The first row of sequence 2 attends only to itself: output equals its value rows.
    for (int64_t h = 0; h < 8; ++h) {
      for (int64_t d = 0; d < hd; ++d) {
        EXPECT_NEAR(out_fast[7 * qw + h * hd + d], v[7 * kvw + (h / 4) * hd + d], 1e-6f);
      }
    }
  }
}

TEST(CpuBackendTest, ElementwiseOpsAreCorrect) {
  auto b = NewCpuBackend({.threads = 2});
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 2, 2}, out(4);
  b->RmsNorm(Tensor::Of(x.data(), DType::kF32, 1, 4), Tensor::Of(w.data(), DType::kF32, 1, 4), 0.0f,
             Tensor::Of(out.data(), DType::kF32, 1, 4));
  const float rms = std::sqrt((1 + 4 + 9 + 16) / 4.0f);
  EXPECT_NEAR(out[0], 1 / rms, 1e-6);
  EXPECT_NEAR(out[3], 8 / rms, 1e-6);
  std::vector<float> gu = {1.0f, -2.0f, 3.0f, 4.0f}, act(2);
  b->SwiGlu(Tensor::Of(gu.data(), DType::kF32, 1, 4), Tensor::Of(act.data(), DType::kF32, 1, 2));
  EXPECT_NEAR(act[0], 1.0f / (1 + std::exp(-1.0f)) * 3.0f, 1e-6);
  EXPECT_NEAR(act[1], -2.0f / (1 + std::exp(2.0f)) * 4.0f, 1e-6);
  // RoPE at position p rotates pair (i, i + half) by p * inv_freq[i].
  std::vector<float> r = {1, 0, 0, 1};
  std::vector<int32_t> pos = {3};
  std::vector<float> inv = {0.5f, 0.25f};
  b->Rope(Tensor::Of(r.data(), DType::kF32, 1, 4), 4, pos, inv);
  EXPECT_NEAR(r[0], std::cos(1.5f), 1e-6);
  EXPECT_NEAR(r[2], std::sin(1.5f), 1e-6);
  EXPECT_NEAR(r[1], -std::sin(0.75f), 1e-6);
  EXPECT_NEAR(r[3], std::cos(0.75f), 1e-6);
  // Embedding widens 16-bit rows.
  std::vector<uint16_t> table = {F32ToBf16(1.5f), F32ToBf16(-2.0f), F32ToBf16(0.25f),
                                 F32ToBf16(8.0f)};
  std::vector<int32_t> ids = {1, 0};
  std::vector<float> emb(4);
  b->Embedding(Tensor::Of(table.data(), DType::kBF16, 2, 2), ids,
               Tensor::Of(emb.data(), DType::kF32, 2, 2));
  EXPECT_EQ(emb, (std::vector<float>{0.25f, 8.0f, 1.5f, -2.0f}));
}

TEST(DTypeTest, HalfConversionsRoundTrip) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.1f}) {
    EXPECT_NEAR(F16ToF32(F32ToF16(f)), f, std::fabs(f) * 1e-3f) << f;
  }
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);  // overflow -> inf
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0x0001), 5.9604645e-08f);               // smallest subnormal
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 1.0f / 256)), 1.0f);  // ties to even
  EXPECT_EQ(Bf16ToF32(F32ToBf16(3.0f)), 3.0f);
}

}  // namespace
}  // namespace shardserve
