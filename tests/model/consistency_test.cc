// The engine against an independent double-precision forward pass on every supported variant,
// batched steps against separate runs, and 16-bit weights against F32.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/safetensors.h"
#include "model/stage.h"
#include "model/synth.h"
#include "tests/model/reference_forward.h"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using testing::TempDir;

std::vector<int32_t> Iota(int64_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

std::vector<int32_t> Tokens(int64_t n, int32_t vocab, uint32_t seed) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i)
    t[i] = static_cast<int32_t>((seed * 2654435761u + i * 40503u) % vocab);
  return t;
}

// Logits at every position of `tokens`, one forward call per position after a prefill of `prefill`.
std::vector<std::vector<float>> EngineLogits(ModelStage& stage, const std::vector<int32_t>& tokens,
                                             int64_t prefill) {
  std::vector<std::vector<float>> out;
  SequenceStep s;
  s.block_table = Iota(stage.kv_spec().num_blocks);
  for (int64_t pos = 0; pos < static_cast<int64_t>(tokens.size());) {
    const int64_t n = pos == 0 ? prefill : 1;
    s.tokens.assign(tokens.begin() + pos, tokens.begin() + pos + n);
    s.start_pos = pos;
    s.compute_logits = true;
    auto r = stage.Forward({&s, 1}, {});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    pos += n;
    out.emplace_back(r->data);
  }
  return out;
}

class ArchitectureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ArchitectureTest, MatchesDoublePrecisionReference) {
  auto config = SynthConfigByName(GetParam());
  ASSERT_TRUE(config.ok());
  TempDir dir;
  ASSERT_TRUE(WriteSynthModel(*config, dir.path(), {.seed = 7, .threads = 1}).ok());
  auto weights = OpenSafetensorsFolder(dir.path());
  ASSERT_TRUE(weights.ok());
  const std::vector<int32_t> tokens = Tokens(20, config->vocab_size, 3);
  const auto ref = testing::ReferenceForward(*config, **weights, tokens);
  for (bool reference_kernels : {false, true}) {
    auto backend = NewCpuBackend({.threads = 2, .reference = reference_kernels});
    auto stage = LoadStage(dir.path(), {}, {}, backend.get());
    ASSERT_TRUE(stage.ok()) << stage.status();
    // Prefill 12 tokens, then decode one at a time: the last prefill row and every decode row.
    const auto got = EngineLogits(**stage, tokens, 12);
    ASSERT_EQ(got.size(), 9u);
    double max_diff = 0, max_abs = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const auto& r = ref[11 + i];
      for (size_t v = 0; v < r.size(); ++v) {
        max_diff = std::max(max_diff, std::fabs(r[v] - got[i][v]));
        max_abs = std::max(max_abs, std::fabs(r[v]));
      }
    }
    EXPECT_GT(max_abs, 0.05);  // the comparison is not between near-zero vectors
    EXPECT_LE(max_diff, 1e-4) << GetParam() << (reference_kernels ? " reference" : " fast");
  }
}

INSTANTIATE_TEST_SUITE_P(Synthetic, ArchitectureTest,
                         ::testing::Values("tiny-llama", "tiny-llama-8l", "tiny-qwen2",
                                           "tiny-llama3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(ConsistencyTest, BatchedStepEqualsSeparateRuns) {
  auto config = SynthConfigByName("tiny-llama-8l");
  ASSERT_TRUE(config.ok());
  TempDir dir;
  ASSERT_TRUE(WriteSynthModel(*config, dir.path(), {.seed = 11, .threads = 1}).ok());
  auto backend = NewCpuBackend({.threads = 2});
  KvCacheSpec kv{.block_size = 16, .num_blocks = 8 * 8};
  auto stage = LoadStage(dir.path(), {}, kv, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  // Eight sequences with histories of different lengths, each in its own 8 blocks. Each first
  // gets its history alone; then one batched step mixes prefill chunks and decode tokens.
  std::vector<SequenceStep> batch;
  std::vector<std::vector<float>> separate;
  for (int s = 0; s < 8; ++s) {
    const int64_t history = 5 + 13 * s;
    const int64_t new_tokens = s % 3 == 0 ? 7 : 1;  // prefill chunk or decode
    const auto tokens = Tokens(history + new_tokens, 512, s + 1);
    SequenceStep first;
    first.block_table = std::vector<int32_t>(8);
    std::iota(first.block_table.begin(), first.block_table.end(), s * 8);
    std::reverse(first.block_table.begin(), first.block_table.end());  // blocks need not be ordered
    first.tokens.assign(tokens.begin(), tokens.begin() + history);
    first.start_pos = 0;
    ASSERT_TRUE((*stage)->Forward({&first, 1}, {}).ok());
    SequenceStep next = first;
    next.tokens.assign(tokens.begin() + history, tokens.end());
    next.start_pos = history;
    next.compute_logits = true;
    auto alone = (*stage)->Forward({&next, 1}, {});
    ASSERT_TRUE(alone.ok()) << alone.status();
    separate.push_back(alone->data);
    batch.push_back(next);
  }
  // Rewriting the same positions with the same keys leaves the cache as it was.
  batch[5].compute_logits = false;
  auto together = (*stage)->Forward(batch, {});
  ASSERT_TRUE(together.ok()) << together.status();
  ASSERT_EQ(together->rows, 7);
  int row = 0;
  for (int s = 0; s < 8; ++s) {
    if (s == 5) continue;
    float max_diff = 0;
    for (int64_t v = 0; v < 512; ++v) {
      max_diff = std::max(max_diff, std::fabs(together->data[row * 512 + v] - separate[s][v]));
    }
    EXPECT_LE(max_diff, 1e-5f) << "sequence " << s;
    ++row;
  }
}

// What a failover's resume relies on: a sequence re-prefilled from its token log (in chunks,
// through the prefill GEMM and tiled attention) gets the logits it had when it was decoded one
// token at a time (the GEMV and one-row attention), up to float summation order, and the same
// greedy token. Measured on stories260K over 120 decoded positions with the fast kernels.
TEST(ConsistencyTest, ResumeByPrefillTracksDecode) {
  auto backend = NewCpuBackend({.threads = 2});
  KvCacheSpec kv{.block_size = 16, .num_blocks = 32};
  auto stage = LoadStage("../shared/models/stories260K", {}, kv, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  const int64_t vocab = (*stage)->config().vocab_size;
  auto argmax = [](const std::vector<float>& l) {
    return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  };
  // Sequence A in blocks 0-15: a 20-token prompt, then 120 greedy tokens one at a time.
  std::vector<int32_t> log = Tokens(20, static_cast<int32_t>(vocab), 3);
  std::vector<std::vector<float>> decoded;  // decoded[i]: logits after log[0, 20 + i)
  SequenceStep a;
  a.block_table = Iota(16);
  a.tokens = log;
  a.compute_logits = true;
  for (int i = 0; i < 120; ++i) {
    auto r = (*stage)->Forward({&a, 1}, {});
    ASSERT_TRUE(r.ok()) << r.status();
    decoded.push_back(r->data);
    a.start_pos += static_cast<int64_t>(a.tokens.size());
    a.tokens = {argmax(r->data)};
    log.push_back(a.tokens[0]);
  }
  // Sequence B in blocks 16-31 re-prefills the log up to each checkpoint in chunks of 64 rows.
  float worst = 0, scale = 0;
  for (int64_t end = 20; end <= 139; end += 17) {
    SequenceStep b;
    b.block_table = Iota(32);
    b.block_table.erase(b.block_table.begin(), b.block_table.begin() + 16);
    std::vector<float> logits;
    for (int64_t pos = 0; pos < end; pos += 64) {
      const int64_t n = std::min<int64_t>(64, end - pos);
      b.tokens.assign(log.begin() + pos, log.begin() + pos + n);
      b.start_pos = pos;
      b.compute_logits = pos + n == end;
      auto r = (*stage)->Forward({&b, 1}, {});
      ASSERT_TRUE(r.ok()) << r.status();
      if (b.compute_logits) logits = r->data;
    }
    const std::vector<float>& want = decoded[end - 20];
    ASSERT_EQ(logits.size(), want.size());
    EXPECT_EQ(argmax(logits), argmax(want)) << "after " << end << " tokens";
    for (int64_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, std::fabs(logits[v] - want[v]));
      scale = std::max(scale, std::fabs(want[v]));
    }
  }
  // docs/RELIABILITY.md quotes this figure.
  std::printf("resume by prefill: max |logit difference| %.3g of max |logit| %.3g\n", worst, scale);
  EXPECT_LE(worst, 1e-4f * scale);
}

TEST(ConsistencyTest, Bf16AndF16WeightsTrackF32) {
  auto config = SynthConfigByName("tiny-llama-8l");
  ASSERT_TRUE(config.ok());
  const auto tokens = Tokens(24, 512, 5);
  std::vector<std::vector<std::vector<float>>> runs;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    TempDir dir;
    ASSERT_TRUE(WriteSynthModel(*config, dir.path(), {.dtype = dt, .seed = 3, .threads = 1}).ok());
    auto backend = NewCpuBackend({.threads = 2});
    auto stage = LoadStage(dir.path(), {}, {}, backend.get());
    ASSERT_TRUE(stage.ok()) << stage.status();
    runs.push_back(EngineLogits(**stage, tokens, 16));
  }
  // Weights rounded to 8 (BF16) or 11 (F16) significant bits: logits move by a few relative eps
  // of the weights' precision, accumulated over the layers.
  auto rel_error = [&](const auto& a, const auto& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      for (size_t v = 0; v < a[i].size(); ++v) {
        num = std::max<double>(num, std::fabs(a[i][v] - b[i][v]));
        den = std::max<double>(den, std::fabs(b[i][v]));
      }
    }
    return num / den;
  };
  const double bf16 = rel_error(runs[1], runs[0]);
  const double f16 = rel_error(runs[2], runs[0]);
  EXPECT_LT(bf16, 8 * 0.0078125);    // 8 x 2^-7
  EXPECT_LT(f16, 8 * 0.0009765625);  // 8 x 2^-10
  EXPECT_GT(bf16, f16);  // the coarser format is further off: the two files really differ
}

TEST(ConsistencyTest, ForwardRejectsBadSteps) {
  auto config = SynthConfigByName("tiny-llama");
  TempDir dir;
  ASSERT_TRUE(WriteSynthModel(*config, dir.path(), {.threads = 1}).ok());
  auto backend = NewCpuBackend({.threads = 1});
  auto stage = LoadStage(dir.path(), {}, {.block_size = 16, .num_blocks = 4}, backend.get());
  ASSERT_TRUE(stage.ok());
  SequenceStep s;
  s.tokens = {1, 2, 3};
  s.block_table = {0};
  EXPECT_TRUE((*stage)->Forward({&s, 1}, {}).ok());
  s.block_table = {4};
  EXPECT_EQ((*stage)->Forward({&s, 1}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  s.block_table = {0};
  s.tokens = {1, 512};
  EXPECT_EQ((*stage)->Forward({&s, 1}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  s.tokens = {1};
  s.start_pos = 16;  // needs a second block
  EXPECT_EQ((*stage)->Forward({&s, 1}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  s.start_pos = 600;
  s.block_table = {0, 1, 2, 3};
  EXPECT_EQ((*stage)->Forward({&s, 1}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*stage)->Forward({}, {}).ok());
  // A middle stage checks the size of the hidden states it is handed.
  auto mid = LoadStage(dir.path(), {.layer_begin = 1, .layer_end = 3}, {}, backend.get());
  ASSERT_TRUE(mid.ok());
  s.start_pos = 0;
  s.tokens = {1, 2};
  std::vector<float> hidden(64);
  EXPECT_EQ((*mid)->Forward({&s, 1}, hidden).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConsistencyTest, StagesChainedEqualOneStage) {
  auto config = SynthConfigByName("tiny-llama-8l");
  TempDir dir;
  ASSERT_TRUE(WriteSynthModel(*config, dir.path(), {.seed = 2, .threads = 1}).ok());
  auto backend = NewCpuBackend({.threads = 2});
  auto whole = LoadStage(dir.path(), {}, {}, backend.get());
  std::vector<std::unique_ptr<ModelStage>> parts;
  for (auto [b, e] : {std::pair{0, 3}, {3, 5}, {5, 8}}) {
    auto st = LoadStage(dir.path(), {.layer_begin = b, .layer_end = e}, {}, backend.get());
    ASSERT_TRUE(st.ok()) << st.status();
    parts.push_back(std::move(*st));
  }
  SequenceStep s;
  s.tokens = Tokens(9, 512, 1);
  s.block_table = Iota(32);
  s.compute_logits = true;
  auto expected = (*whole)->Forward({&s, 1}, {});
  ASSERT_TRUE(expected.ok());
  std::vector<float> hidden;
  for (auto& p : parts) {
    auto out = p->Forward({&s, 1}, hidden);
    ASSERT_TRUE(out.ok()) << out.status();
    hidden = out->data;
  }
  EXPECT_EQ(hidden, expected->data);  // same ops in the same order: bit-identical
}

}  // namespace
}  // namespace shardserve
