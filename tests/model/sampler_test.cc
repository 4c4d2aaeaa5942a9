#include "model/sampler.h"

#include <cmath>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

TEST(SamplerTest, GreedyPicksArgmaxAndLowestIdOnTies) {
  SamplingParams p;
  EXPECT_EQ(Sample({0.1f, 3.0f, -1.0f, 3.0f}, p, 0, {}).token, 1);
  const SampleResult r = Sample({0.0f, std::log(3.0f)}, p, 0, {});
  EXPECT_EQ(r.token, 1);
  EXPECT_NEAR(r.logprob, std::log(0.75f), 1e-6);
}

TEST(SamplerTest, RandomnessIsAFunctionOfSeedAndPosition) {
  SamplingParams p{.temperature = 1.0f, .seed = 42};
  std::vector<float> logits(50, 0.0f);
  std::vector<int32_t> a, b;
  for (int pos = 0; pos < 64; ++pos) {
    a.push_back(Sample(logits, p, pos, {}).token);
    b.push_back(Sample(logits, p, pos, {7, 7, 7}).token);  // history without penalties: no effect
  }
  EXPECT_EQ(a, b);
  EXPECT_EQ(SamplingUniform(42, 10), SamplingUniform(42, 10));
  EXPECT_NE(SamplingUniform(42, 10), SamplingUniform(42, 11));
  EXPECT_NE(SamplingUniform(42, 10), SamplingUniform(43, 10));
  p.seed = 43;
  std::vector<int32_t> c;
  for (int pos = 0; pos < 64; ++pos) c.push_back(Sample(logits, p, pos, {}).token);
  EXPECT_NE(a, c);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  SamplingParams p{.temperature = 1.0f, .seed = 1};
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(5.0f)};  // 1:2:5
  std::map<int32_t, int> counts;
  const int n = 40000;
  for (int pos = 0; pos < n; ++pos) ++counts[Sample(logits, p, pos, {}).token];
  EXPECT_NEAR(counts[0] / double(n), 1.0 / 8, 0.01);
  EXPECT_NEAR(counts[1] / double(n), 2.0 / 8, 0.01);
  EXPECT_NEAR(counts[2] / double(n), 5.0 / 8, 0.01);
  // Temperature 0.5 squares the ratios: 1:4:25.
  p.temperature = 0.5f;
  counts.clear();
  for (int pos = 0; pos < n; ++pos) ++counts[Sample(logits, p, pos, {}).token];
  EXPECT_NEAR(counts[2] / double(n), 25.0 / 30, 0.01);
}

TEST(SamplerTest, TruncationKeepsOnlyTheHead) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 0.5f};
  for (int pos = 0; pos < 200; ++pos) {
    EXPECT_EQ(Sample(logits, {.temperature = 2.0f, .top_k = 1, .seed = 3}, pos, {}).token, 3);
    const int32_t k2 = Sample(logits, {.temperature = 2.0f, .top_k = 2, .seed = 3}, pos, {}).token;
    EXPECT_TRUE(k2 == 3 || k2 == 2);
    EXPECT_EQ(Sample(logits, {.temperature = 1.0f, .top_p = 0.1f, .seed = 3}, pos, {}).token, 3);
    // min_p 0.3: keeps tokens with p >= 0.3 * p(3): ids 3 (1.0) and 2 (e^-1 = 0.37).
    const int32_t mp =
        Sample(logits, {.temperature = 1.0f, .min_p = 0.3f, .seed = 3}, pos, {}).token;
    EXPECT_TRUE(mp == 3 || mp == 2);
  }
}

TEST(SamplerTest, PenaltiesDiscourageRepeats) {
  const std::vector<float> logits = {1.0f, 2.0f, 1.9f};
  SamplingParams p;
  EXPECT_EQ(Sample(logits, p, 0, {1}).token, 1);
  p.repetition_penalty = 1.2f;  // 2.0 / 1.2 = 1.67 < 1.9
  EXPECT_EQ(Sample(logits, p, 0, {1}).token, 2);
  p = {.presence_penalty = 0.2f};
  EXPECT_EQ(Sample(logits, p, 0, {1}).token, 2);
  p = {.frequency_penalty = 0.04f};
  EXPECT_EQ(Sample(logits, p, 0, {1}).token, 1);        // 2.0 - 0.04 > 1.9
  EXPECT_EQ(Sample(logits, p, 0, {1, 1, 1}).token, 2);  // 2.0 - 0.12 < 1.9
  // A negative logit is multiplied by the repetition penalty, pushing it further down.
  p = {.repetition_penalty = 2.0f};
  EXPECT_EQ(Sample({-1.0f, -1.5f}, p, 0, {0}).token, 1);
}

TEST(SamplerTest, ValidationNamesTheField) {
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
  EXPECT_THAT(std::string(ValidateSamplingParams({.temperature = -1}).message()),
              HasSubstr("temperature"));
  EXPECT_THAT(std::string(ValidateSamplingParams({.temperature = NAN}).message()),
              HasSubstr("temperature"));
  EXPECT_THAT(std::string(ValidateSamplingParams({.top_p = 0}).message()), HasSubstr("top_p"));
  EXPECT_THAT(std::string(ValidateSamplingParams({.top_p = 1.5f}).message()), HasSubstr("top_p"));
  EXPECT_THAT(std::string(ValidateSamplingParams({.top_k = -2}).message()), HasSubstr("top_k"));
  EXPECT_THAT(std::string(ValidateSamplingParams({.min_p = 2}).message()), HasSubstr("min_p"));
  EXPECT_THAT(std::string(ValidateSamplingParams({.repetition_penalty = 0}).message()),
              HasSubstr("repetition_penalty"));
}

TEST(SamplerTest, TopLogprobsAreSortedAndNormalised) {
  const auto top = TopLogprobs({0.0f, std::log(3.0f), 0.0f}, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].first, 1);
  EXPECT_NEAR(top[0].second, std::log(0.6f), 1e-6);
  EXPECT_EQ(top[1].first, 0);
}

}  // namespace
}  // namespace shardserve
