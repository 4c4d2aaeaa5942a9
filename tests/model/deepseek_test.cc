// The DeepSeek-V2/V3 stage against an independent double-precision forward pass: prefill and
// decode, a batched step mixing prefill chunks and decode tokens, chained stages, the MLA cache
// size, routing, config parsing and generation.
#include "model/deepseek.h"

#include <numeric>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/generator.h"
#include "model/stage.h"
#include "model/synth.h"
#include "nlohmann/json.hpp"
#include "tests/model/reference_deepseek.h"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using testing::TempDir;

std::vector<int32_t> Iota(int64_t n, int32_t from = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

std::vector<int32_t> Tokens(int64_t n, int32_t vocab, uint32_t seed) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) {
    t[i] = static_cast<int32_t>((seed * 2654435761u + i * 40503u) % vocab);
  }
  return t;
}

double MaxAbs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

double MaxDiff(const std::vector<double>& ref, const float* got) {
  double m = 0;
  for (size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::fabs(ref[i] - got[i]));
  return m;
}

class DeepseekTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    auto config = SynthConfigByName(GetParam());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    // Larger weights than the default 0.02: attention far from uniform, routing far from ties.
    ASSERT_TRUE(
        WriteSynthModel(config_, dir_.path(), {.seed = 7, .threads = 1, .stddev = 0.08}).ok());
    auto weights = OpenSafetensorsFolder(dir_.path());
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(*weights);
  }

  ModelConfig config_;
  TempDir dir_;
  std::unique_ptr<WeightSource> weights_;
};

TEST_P(DeepseekTest, PrefillAndDecodeMatchReference) {
  const auto tokens = Tokens(20, static_cast<int32_t>(config_.vocab_size), 3);
  const auto ref = testing::ReferenceDeepseekForward(config_, *weights_, tokens);
  for (bool reference_kernels : {false, true}) {
    auto backend = NewCpuBackend({.threads = 2, .reference = reference_kernels});
    auto stage = LoadStage(dir_.path(), {}, {}, backend.get());
    ASSERT_TRUE(stage.ok()) << stage.status();
    SequenceStep s;
    s.block_table = Iota((*stage)->kv_spec().num_blocks);
    s.compute_logits = true;
    double max_diff = 0, max_abs = 0;
    // Prefill 12 tokens, then decode one at a time.
    for (int64_t pos = 0; pos < 20;) {
      const int64_t n = pos == 0 ? 12 : 1;
      s.tokens.assign(tokens.begin() + pos, tokens.begin() + pos + n);
      s.start_pos = pos;
      auto out = (*stage)->Forward({&s, 1}, {});
      ASSERT_TRUE(out.ok()) << out.status();
      ASSERT_EQ(out->rows, 1);
      pos += n;
      max_diff = std::max(max_diff, MaxDiff(ref[pos - 1], out->data.data()));
      max_abs = std::max(max_abs, MaxAbs(ref[pos - 1]));
    }
    EXPECT_GT(max_abs, 0.05);  // not a comparison of near-zero vectors
    std::printf("%s %s: max |logit| %.3g, max difference %.3g\n", GetParam(),
                reference_kernels ? "reference kernels" : "fast kernels", max_abs, max_diff);
    EXPECT_LE(max_diff, 1e-4) << GetParam() << (reference_kernels ? " reference" : " fast");
  }
}

TEST_P(DeepseekTest, BatchedMixedStepMatchesReference) {
  auto backend = NewCpuBackend({.threads = 2});
  const int kSeqs = 6;
  KvCacheSpec kv{.block_size = 4, .num_blocks = kSeqs * 12};
  auto stage = LoadStage(dir_.path(), {}, kv, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  // Each sequence first runs its history alone (in its own reversed blocks); then one step
  // mixes prefill chunks (including a fresh prompt) with decode tokens.
  std::vector<SequenceStep> batch;
  std::vector<std::vector<std::vector<double>>> refs;
  for (int s = 0; s < kSeqs; ++s) {
    const int64_t history = s == 0 ? 0 : 3 + 7 * s;
    const int64_t new_tokens = s % 2 == 0 ? 5 : 1;
    const auto tokens = Tokens(history + new_tokens, 512, s + 1);
    refs.push_back(testing::ReferenceDeepseekForward(config_, *weights_, tokens));
    SequenceStep step;
    step.block_table = Iota(12, s * 12);
    std::reverse(step.block_table.begin(), step.block_table.end());
    if (history > 0) {
      step.tokens.assign(tokens.begin(), tokens.begin() + history);
      ASSERT_TRUE((*stage)->Forward({&step, 1}, {}).ok());
    }
    step.tokens.assign(tokens.begin() + history, tokens.end());
    step.start_pos = history;
    step.compute_logits = true;
    batch.push_back(step);
  }
  auto out = (*stage)->Forward(batch, {});
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->rows, kSeqs);
  for (int s = 0; s < kSeqs; ++s) {
    const auto& ref = refs[s].back();
    EXPECT_LE(MaxDiff(ref, out->data.data() + s * config_.vocab_size), 1e-4) << "sequence " << s;
  }
}

TEST_P(DeepseekTest, TwoStagesEqualOneStage) {
  auto backend = NewCpuBackend({.threads = 2});
  auto whole = LoadStage(dir_.path(), {}, {}, backend.get());
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int64_t split = 2;  // one side dense + MoE, the other MoE only
  auto first = LoadStage(dir_.path(), {.layer_begin = 0, .layer_end = split}, {}, backend.get());
  auto second = LoadStage(dir_.path(), {.layer_begin = split, .layer_end = config_.num_layers}, {},
                          backend.get());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  SequenceStep s;
  s.tokens = Tokens(9, 512, 1);
  s.block_table = Iota(32);
  s.compute_logits = true;
  for (int step = 0; step < 2; ++step) {
    auto expected = (*whole)->Forward({&s, 1}, {});
    ASSERT_TRUE(expected.ok()) << expected.status();
    auto hidden = (*first)->Forward({&s, 1}, {});
    ASSERT_TRUE(hidden.ok()) << hidden.status();
    EXPECT_EQ(hidden->cols, config_.hidden_size);
    auto got = (*second)->Forward({&s, 1}, hidden->data);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->data, expected->data);  // same ops in the same order: bit-identical
    s.start_pos += static_cast<int64_t>(s.tokens.size());
    s.tokens = {17};
  }
}

TEST_P(DeepseekTest, CacheHoldsOnlyLatentAndRopeKey) {
  auto backend = NewCpuBackend({.threads = 1});
  const DeepseekConfig& d = config_.deepseek;
  auto stage = LoadStage(dir_.path(), {}, {}, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(MlaCacheValuesPerToken(config_), d.kv_lora_rank + d.qk_rope_head_dim);
  EXPECT_EQ((*stage)->KvBytesPerToken(),
            config_.num_layers * (d.kv_lora_rank + d.qk_rope_head_dim) * 4);
  auto part = LoadStage(dir_.path(), {.layer_begin = 1, .layer_end = 2}, {}, backend.get());
  ASSERT_TRUE(part.ok());
  EXPECT_EQ((*part)->KvBytesPerToken(), (d.kv_lora_rank + d.qk_rope_head_dim) * 4);
  // Standard multi-head attention would keep every head's key and value.
  const int64_t mha = config_.num_heads * (d.qk_nope_head_dim + d.qk_rope_head_dim + d.v_head_dim);
  EXPECT_LT(MlaCacheValuesPerToken(config_) * 2, mha);
}

TEST_P(DeepseekTest, GreedyGenerationFollowsReferenceArgmax) {
  auto backend = NewCpuBackend({.threads = 2});
  auto stage = LoadStage(dir_.path(), {}, {}, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  const auto prompt = Tokens(7, 512, 9);
  GenerateOptions options;
  options.max_tokens = 6;
  options.prefill_chunk = 4;  // a chunked prefill
  auto result = Generate(**stage, prompt, options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->ids.size(), 6u);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), result->ids.begin(), result->ids.end() - 1);
  const auto ref = testing::ReferenceDeepseekForward(config_, *weights_, all);
  for (size_t i = 0; i < result->ids.size(); ++i) {
    const auto& r = ref[prompt.size() - 1 + i];
    const int32_t argmax = static_cast<int32_t>(std::max_element(r.begin(), r.end()) - r.begin());
    EXPECT_EQ(result->ids[i], argmax) << "token " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Synthetic, DeepseekTest,
                         ::testing::Values("deepseek-v3-tiny", "deepseek-v2-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(DeepseekConfigTest, V2LiteShapeCacheIsFarSmallerThanMha) {
  auto c = SynthConfigByName("deepseek-v2-lite-shape");
  ASSERT_TRUE(c.ok());
  const DeepseekConfig& d = c->deepseek;
  EXPECT_EQ(MlaCacheValuesPerToken(*c), 576);  // 512 latent + 64 rotary key
  const int64_t mha = c->num_heads * (d.qk_nope_head_dim + d.qk_rope_head_dim + d.v_head_dim);
  EXPECT_EQ(mha, 5120);
}

TEST(DeepseekConfigTest, JsonRoundTripAndValidation) {
  for (const char* name : {"deepseek-v3-tiny", "deepseek-v2-tiny", "deepseek-v2-lite-shape"}) {
    auto c = SynthConfigByName(name);
    ASSERT_TRUE(c.ok());
    auto back = ModelConfig::FromJson(c->ToJson());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->ToJson(), c->ToJson()) << name;
    EXPECT_EQ(back->head_dim, c->deepseek.qk_nope_head_dim + c->deepseek.qk_rope_head_dim);
    EXPECT_EQ(back->rope_scaling.type, RopeScaling::Type::kYarn);
  }
  auto c = SynthConfigByName("deepseek-v3-tiny");
  auto json = nlohmann::json::parse(c->ToJson());
  json["n_group"] = 3;  // does not divide 16 experts
  EXPECT_FALSE(ModelConfig::FromJson(json.dump()).ok());
  json = nlohmann::json::parse(c->ToJson());
  json["topk_method"] = "random";
  EXPECT_FALSE(ModelConfig::FromJson(json.dump()).ok());
  json = nlohmann::json::parse(c->ToJson());
  json.erase("kv_lora_rank");
  EXPECT_FALSE(ModelConfig::FromJson(json.dump()).ok());
  json = nlohmann::json::parse(c->ToJson());
  json["num_experts_per_tok"] = 17;
  EXPECT_FALSE(ModelConfig::FromJson(json.dump()).ok());
  // V3 defaults when the routing fields are absent.
  json = nlohmann::json::parse(c->ToJson());
  for (const char* k : {"scoring_func", "topk_method", "norm_topk_prob", "routed_scaling_factor"}) {
    json.erase(k);
  }
  auto v3 = ModelConfig::FromJson(json.dump());
  ASSERT_TRUE(v3.ok()) << v3.status();
  EXPECT_EQ(v3->deepseek.scoring, DeepseekConfig::Scoring::kSigmoid);
  EXPECT_EQ(v3->deepseek.topk_method, DeepseekConfig::TopkMethod::kNoAuxTc);
  EXPECT_TRUE(v3->deepseek.norm_topk_prob);
  EXPECT_EQ(v3->deepseek.routed_scaling_factor, 2.5);
}

TEST(DeepseekRoutingTest, V3GroupLimitedWithBias) {
  auto c = SynthConfigByName("deepseek-v3-tiny");  // 16 experts, 4 groups of 4, top-2 groups
  ASSERT_TRUE(c.ok());
  std::vector<float> logits(16, -4.0f);
  logits[0] = 3.0f;  // group 0: one strong expert
  logits[5] = 1.0f;  // group 1: two medium ones
  logits[6] = 1.0f;
  logits[9] = 0.5f;   // group 2
  logits[10] = 0.5f;  // group 2
  std::vector<float> bias(16, 0.0f);
  bias[12] = 0.9f;  // group 3: biased above group 0's second-best
  bias[13] = 0.9f;
  const ExpertRouting r = RouteTokens(*c, logits.data(), 1, bias);
  ASSERT_EQ(r.top_k, 4);
  // Group sums of the two best biased scores: g1 1.46, g3 1.84, g0 0.97, g2 1.24 -> g3, g1.
  std::vector<int32_t> experts(r.experts.begin(), r.experts.end());
  EXPECT_EQ(experts, (std::vector<int32_t>{12, 13, 5, 6}));
  // Weights are the unbiased sigmoid scores, normalised, times routed_scaling_factor 2.5.
  double sum = 0;
  for (float w : r.weights) sum += w;
  EXPECT_NEAR(sum, 2.5, 1e-5);
  EXPECT_NEAR(r.weights[2] / r.weights[0], (1 / (1 + std::exp(-1.0))) / (1 / (1 + std::exp(4.0))),
              1e-3);
}

TEST(DeepseekRoutingTest, V2SoftmaxScalesWhenNotNormalised) {
  auto c = SynthConfigByName("deepseek-v2-tiny");  // 8 experts, top-3, scale 2.0, no norm
  ASSERT_TRUE(c.ok());
  std::vector<float> logits = {0, 0, 0, 0, 0, 0, 0, std::log(3.0f)};
  const ExpertRouting r = RouteTokens(*c, logits.data(), 1, {});
  EXPECT_EQ(r.experts[0], 7);
  EXPECT_NEAR(r.weights[0], 2.0 * 3.0 / 10.0, 1e-6);  // softmax 3/10, times 2
}

TEST(DeepseekMtpTest, MtpModulesAreListedAndNotLoaded) {
  auto c = SynthConfigByName("deepseek-v3-tiny");
  ASSERT_TRUE(c.ok());
  TempDir dir;
  ASSERT_TRUE(WriteSynthModel(*c, dir.path(), {.threads = 1}).ok());
  auto weights = OpenSafetensorsFolder(dir.path());
  ASSERT_TRUE(weights.ok());
  const auto names = MtpTensorNames(*c, **weights);
  EXPECT_FALSE(names.empty());
  for (const auto& n : names) EXPECT_EQ(n.rfind("model.layers.4.", 0), 0u) << n;
  EXPECT_NE(std::find(names.begin(), names.end(), "model.layers.4.eh_proj.weight"), names.end());
  // The stage covers layers [0, 4) only; the MTP layer is no stage's business.
  auto backend = NewCpuBackend({.threads = 1});
  auto stage = LoadStage(dir.path(), {}, {}, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ((*stage)->layer_end(), 4);
  EXPECT_FALSE(LoadStage(dir.path(), {.layer_begin = 0, .layer_end = 5}, {}, backend.get()).ok());
}

TEST(DeepseekStageTest, RejectsBadSteps) {
  auto c = SynthConfigByName("deepseek-v2-tiny");
  TempDir dir;
  ASSERT_TRUE(WriteSynthModel(*c, dir.path(), {.threads = 1}).ok());
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
  s.start_pos = 16;
  EXPECT_EQ((*stage)->Forward({&s, 1}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*stage)->Forward({}, {}).ok());
  auto mid = LoadStage(dir.path(), {.layer_begin = 1, .layer_end = 2}, {}, backend.get());
  ASSERT_TRUE(mid.ok());
  s.start_pos = 0;
  s.tokens = {1, 2};
  std::vector<float> hidden(64);
  EXPECT_EQ((*mid)->Forward({&s, 1}, hidden).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardserve
