// Every CUDA op against the plain CPU op (the reference kernels) on the same inputs, with a
// tolerance scaled to the epsilon of the dtype that limits the op's precision.
#include <algorithm>
#include <numeric>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/sampler.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace shardserve {
namespace {

using testing_cuda::BackendTensor;
using testing_cuda::Encode;
using testing_cuda::Epsilon;
using testing_cuda::Get;
using testing_cuda::MaxAbs;
using testing_cuda::MaxAbsDiff;
using testing_cuda::Put;
using testing_cuda::PutF32;
using testing_cuda::RandomFloats;

struct OpCase {
  Op op;
  DType dtype;  // weights (MatMul, Embedding); F32 for the rest
  int64_t rows;
  int64_t a;  // cols / k / head_dim ...
  int64_t b;  // m / heads ...
  bool bias = false;
};

std::string CaseName(const ::testing::TestParamInfo<OpCase>& info) {
  static const char* kOps[] = {"Embedding",      "RmsNorm", "MatMul", "Rope",
                               "PagedAttention", "SwiGlu",  "Add"};
  const OpCase& c = info.param;
  return absl::StrCat(kOps[static_cast<int>(c.op)], "_", std::string(DTypeName(c.dtype)), "_",
                      c.rows, "x", c.a, "x", c.b, c.bias ? "_bias" : "");
}

class CudaOpTest : public ::testing::TestWithParam<OpCase> {
 protected:
  void SetUp() override {
    SHARDSERVE_GET_CUDA_BACKEND_OR_SKIP(gpu_);
    cpu_ = NewCpuBackend({.threads = 2, .reference = true});
  }

  std::unique_ptr<Backend> gpu_, cpu_;
};

TEST_P(CudaOpTest, MatchesCpu) {
  const OpCase& c = GetParam();
  const DType dt = c.dtype;
  Backend* backends[2] = {cpu_.get(), gpu_.get()};
  std::vector<float> result[2];
  float tol = 0.0f;

  switch (c.op) {
    case Op::kEmbedding: {
      const int64_t vocab = 97, cols = c.a;
      const auto table = RandomFloats(vocab * cols, 1);
      const auto enc = Encode(table, dt);
      std::vector<int32_t> ids(c.rows);
      for (int64_t i = 0; i < c.rows; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % vocab);
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor t = Put(be, enc.data(), enc.size(), dt, vocab, cols);
        BackendTensor out = PutF32(be, std::vector<float>(c.rows * cols), c.rows, cols);
        be.Embedding(t.t, ids, out.t);
        result[i] = Get(be, out.t.data, c.rows * cols);
      }
      tol = 0.0f;  // widening is exact
      break;
    }
    case Op::kRmsNorm: {
      const auto x = RandomFloats(c.rows * c.a, 2, 3.0f);
      const auto w = RandomFloats(c.a, 3);
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor tx = PutF32(be, x, c.rows, c.a), tw = PutF32(be, w, 1, c.a);
        BackendTensor out = PutF32(be, std::vector<float>(x.size()), c.rows, c.a);
        be.RmsNorm(tx.t, tw.t, 1e-5f, out.t);
        result[i] = Get(be, out.t.data, x.size());
      }
      tol = 64 * Epsilon(DType::kF32) * std::sqrt(static_cast<float>(c.a));
      break;
    }
    case Op::kMatMul: {
      const int64_t k = c.a, m = c.b;
      const auto x = RandomFloats(c.rows * k, 4);
      auto w = RandomFloats(m * k, 5, 0.5f);
      // Round the weights to the dtype first so both backends see the same values.
      const auto enc = Encode(w, dt);
      const auto bias = RandomFloats(m, 6);
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor tx = PutF32(be, x, c.rows, k);
        BackendTensor tw = Put(be, enc.data(), enc.size(), dt, m, k);
        BackendTensor tb = PutF32(be, bias, 1, m);
        // Output with a stride wider than its columns, as llama.cc's gate/up halves are.
        BackendTensor out = PutF32(be, std::vector<float>(c.rows * 2 * m, 7.0f), c.rows, m);
        out.t.stride = 2 * m;
        be.MatMul(tx.t, tw.t, c.bias ? &tb.t : nullptr, out.t);
        result[i] = Get(be, out.t.data, c.rows * 2 * m);
      }
      // GEMV keeps F32 activations; the tensor-core path rounds them to the weight dtype.
      const bool gemv = c.rows <= 4;
      const float eps = gemv ? Epsilon(DType::kF32) : Epsilon(dt);
      // Rounding errors of the products add up like a random walk (|x| <= 1, |w| <= 0.5);
      // F32 summation order differs between the backends.
      tol = 0.25f * eps * std::sqrt(static_cast<float>(k)) + 16 * Epsilon(DType::kF32) * k;
      break;
    }
    case Op::kRope: {
      const int64_t head_dim = c.a, heads = c.b, cols = heads * head_dim;
      const auto x = RandomFloats(c.rows * cols, 7);
      std::vector<int32_t> pos(c.rows);
      for (int64_t r = 0; r < c.rows; ++r) pos[r] = static_cast<int32_t>((r * 613) % 8000);
      std::vector<float> inv_freq(head_dim / 2);
      for (int64_t i = 0; i < head_dim / 2; ++i) {
        inv_freq[i] = 1.0f / std::pow(500000.0f, 2.0f * i / static_cast<float>(head_dim));
      }
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor tx = PutF32(be, x, c.rows, cols);
        be.Rope(tx.t, head_dim, pos, inv_freq);
        result[i] = Get(be, tx.t.data, x.size());
      }
      tol = 1e-5f;  // sin/cos of angles up to ~8000 rad, each side within a few ulp
      break;
    }
    case Op::kPagedAttention: {
      const int64_t head_dim = c.a, heads = c.b, kv_heads = heads / 4;
      const int64_t block_size = 16, num_blocks = 96;
      const int64_t kv_width = kv_heads * head_dim;
      // A prefill from 0, a prefill chunk after cached tokens, and two long decodes whose keys
      // span several attention partitions.
      struct Seq {
        int64_t start, n;
      };
      const std::vector<Seq> shape_seqs = {{0, 37}, {20, 5}, {300, 1}, {700, 1}};
      std::vector<std::vector<int32_t>> tables;
      std::vector<int32_t> free_blocks(num_blocks);
      std::iota(free_blocks.begin(), free_blocks.end(), 0);
      std::shuffle(free_blocks.begin(), free_blocks.end(), std::mt19937(8));
      int64_t next = 0, rows = 0;
      std::vector<AttentionSeq> seqs;
      for (const Seq& s : shape_seqs) {
        const int64_t nb = (s.start + s.n + block_size - 1) / block_size;
        tables.emplace_back(free_blocks.begin() + next, free_blocks.begin() + next + nb);
        next += nb;
        rows += s.n;
      }
      ASSERT_LE(next, num_blocks);
      rows = 0;
      for (size_t i = 0; i < shape_seqs.size(); ++i) {
        seqs.push_back({rows, shape_seqs[i].n, shape_seqs[i].start, tables[i]});
        rows += shape_seqs[i].n;
      }
      const auto q = RandomFloats(rows * heads * head_dim, 9, 2.0f);
      const auto k = RandomFloats(rows * kv_width, 10, 2.0f);
      const auto v = RandomFloats(rows * kv_width, 11);
      const size_t pool = static_cast<size_t>(num_blocks * block_size * kv_width);
      const auto k_cache = RandomFloats(pool, 12, 2.0f);  // the cached positions' keys
      const auto v_cache = RandomFloats(pool, 13);
      const AttentionShape shape{heads, kv_heads, head_dim, block_size, num_blocks};
      std::vector<float> caches[2];
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor tq = PutF32(be, q, rows, heads * head_dim);
        BackendTensor tk = PutF32(be, k, rows, kv_width), tv = PutF32(be, v, rows, kv_width);
        BackendTensor kc = PutF32(be, k_cache, 1, pool), vc = PutF32(be, v_cache, 1, pool);
        BackendTensor out = PutF32(be, std::vector<float>(q.size()), rows, heads * head_dim);
        be.PagedAttention(tq.t, tk.t, tv.t, seqs, shape, KvLayer{kc.t.f32(), vc.t.f32()}, out.t);
        result[i] = Get(be, out.t.data, q.size());
        caches[i] = Get(be, kc.t.data, pool);
        const auto vs = Get(be, vc.t.data, pool);
        caches[i].insert(caches[i].end(), vs.begin(), vs.end());
      }
      EXPECT_EQ(caches[0], caches[1]) << "K/V cache writes differ";
      tol = 256 * Epsilon(DType::kF32) * std::sqrt(static_cast<float>(head_dim));
      break;
    }
    case Op::kSwiGlu: {
      const int64_t inter = c.a;
      const auto gu = RandomFloats(c.rows * 2 * inter, 14, 4.0f);
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor tg = PutF32(be, gu, c.rows, 2 * inter);
        BackendTensor out = PutF32(be, std::vector<float>(c.rows * inter), c.rows, inter);
        be.SwiGlu(tg.t, out.t);
        result[i] = Get(be, out.t.data, c.rows * inter);
      }
      tol = 8 * Epsilon(DType::kF32) * 16.0f;
      break;
    }
    case Op::kAdd: {
      const auto x = RandomFloats(c.rows * c.a, 15), y = RandomFloats(c.rows * c.a, 16);
      for (int i = 0; i < 2; ++i) {
        Backend& be = *backends[i];
        BackendTensor tx = PutF32(be, x, c.rows, c.a), ty = PutF32(be, y, c.rows, c.a);
        be.Add(tx.t, ty.t);
        result[i] = Get(be, tx.t.data, x.size());
      }
      tol = 0.0f;
      break;
    }
  }
  ASSERT_TRUE(gpu_->Synchronize().ok());
  ASSERT_FALSE(result[0].empty());
  EXPECT_LE(MaxAbsDiff(result[0], result[1]), tol)
      << "max |cpu| " << MaxAbs(result[0]) << ", tolerance " << tol;
}

std::vector<OpCase> AllCases() {
  std::vector<OpCase> cases;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    cases.push_back({Op::kEmbedding, dt, 9, 72, 0});
    for (int64_t rows : {1, 3, 4, 5, 33}) {
      for (auto [k, m] : {std::pair<int64_t, int64_t>{64, 172}, {172, 64}, {4096, 1024}}) {
        cases.push_back({Op::kMatMul, dt, rows, k, m, false});
      }
    }
    cases.push_back({Op::kMatMul, dt, 2, 896, 128, true});
    cases.push_back({Op::kMatMul, dt, 40, 896, 128, true});
  }
  for (int64_t rows : {1, 7}) {
    cases.push_back({Op::kRmsNorm, DType::kF32, rows, 64, 0});
    cases.push_back({Op::kRmsNorm, DType::kF32, rows, 4096, 0});
    cases.push_back({Op::kSwiGlu, DType::kF32, rows, 172, 0});
    cases.push_back({Op::kSwiGlu, DType::kF32, rows, 14336, 0});
    cases.push_back({Op::kAdd, DType::kF32, rows, 4096, 0});
  }
  cases.push_back({Op::kRope, DType::kF32, 7, 8, 8});
  cases.push_back({Op::kRope, DType::kF32, 7, 128, 32});
  cases.push_back({Op::kPagedAttention, DType::kF32, 0, 8, 8});
  cases.push_back({Op::kPagedAttention, DType::kF32, 0, 64, 8});
  cases.push_back({Op::kPagedAttention, DType::kF32, 0, 128, 32});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Ops, CudaOpTest, ::testing::ValuesIn(AllCases()), CaseName);

// Sampling: the GPU picks the CPU's token from the same logits, for every kind of parameter.
TEST(CudaSamplerTest, MatchesCpuSampler) {
  std::unique_ptr<Backend> gpu;
  SHARDSERVE_GET_CUDA_BACKEND_OR_SKIP(gpu);
  for (int64_t vocab : {512, 32000, 128256}) {
    std::vector<SamplingParams> params;
    auto add = [&](float t, int k, float p, float min_p, float rep, float pres, float freq) {
      SamplingParams s;
      s.temperature = t;
      s.top_k = k;
      s.top_p = p;
      s.min_p = min_p;
      s.repetition_penalty = rep;
      s.presence_penalty = pres;
      s.frequency_penalty = freq;
      s.seed = 1234 + params.size();
      params.push_back(s);
    };
    add(0, 0, 1, 0, 1, 0, 0);
    add(0, 0, 1, 0, 1.3f, 0.5f, 0.2f);
    add(0.7f, 0, 1, 0, 1, 0, 0);
    add(1.0f, 40, 1, 0, 1, 0, 0);
    add(0.8f, 0, 0.9f, 0, 1, 0, 0);
    add(1.0f, 0, 1, 0.05f, 1, 0, 0);
    add(1.2f, 50, 0.95f, 0.02f, 1.1f, 0.3f, 0.1f);
    add(2.0f, 1, 1, 0, 1, 0, 0);
    const int64_t rows = static_cast<int64_t>(params.size());
    // Peaked logits with exact ties, as quantized or small models produce.
    auto logits = RandomFloats(rows * vocab, 17, 6.0f);
    for (size_t i = 0; i < logits.size(); i += 7) logits[i] = std::round(logits[i]);
    std::vector<std::vector<int32_t>> histories(rows);
    for (int64_t r = 0; r < rows; ++r) {
      for (int j = 0; j < 40; ++j)
        histories[r].push_back(static_cast<int32_t>((r * 31 + j * j) % vocab));
    }
    BackendTensor t = PutF32(*gpu, logits, rows, vocab);
    for (int64_t position : {0, 17, 4095}) {
      std::vector<int64_t> positions(rows, position);
      std::vector<absl::Span<const int32_t>> hs(histories.begin(), histories.end());
      auto got = SampleOnDevice(*gpu, t.t, params, positions, hs);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), params.size());
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(absl::StrCat("vocab ", vocab, " row ", r, " position ", position));
        const SampleResult want = Sample(absl::MakeConstSpan(logits).subspan(r * vocab, vocab),
                                         params[r], position, histories[r]);
        EXPECT_EQ((*got)[r].token, want.token);
        EXPECT_NEAR((*got)[r].logprob, want.logprob, 1e-4f);
      }
    }
  }
}

TEST(CudaBackendTest, RefusesQuantizedWeightsAndBadOptions) {
  std::unique_ptr<Backend> gpu;
  SHARDSERVE_GET_CUDA_BACKEND_OR_SKIP(gpu);
  EXPECT_TRUE(gpu->SupportsOp(Op::kMatMul, DType::kBF16));
  EXPECT_FALSE(gpu->SupportsOp(Op::kMatMul, DType::kQ8_0));
  EXPECT_EQ(NewCudaBackend({.device = 0, .memory_fraction = 1.5}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewCudaBackend({.device = 4096}).status().code(), absl::StatusCode::kInvalidArgument);
  auto huge = gpu->Allocate(size_t{1} << 50);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace shardserve
