#include <cmath>

#include "gtest/gtest.h"
#include "router/placement.h"
#include "router/text_stream.h"
#include "router/validation.h"

namespace shardserve {
namespace {

ModelConfig Config(int layers, int vocab = 512) {
  ModelConfig c;
  c.num_layers = layers;
  c.hidden_size = 64;
  c.intermediate_size = 172;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.vocab_size = vocab;
  c.max_position_embeddings = 512;
  return c;
}

TEST(Placement, ParsesManualRanges) {
  auto r = ParseLayerRanges("0-2,3-4", 5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, (std::vector<LayerRange>{{0, 3}, {3, 5}}));
  EXPECT_EQ(FormatLayerRanges(*r), "0-2,3-4");
  for (const char* bad : {"0-2,4-4", "0-5", "1-4", "0-2", "a-b", "0-2,3-4,"}) {
    auto s = ParseLayerRanges(bad, 5);
    EXPECT_FALSE(s.ok()) << bad;
    if (!s.ok()) EXPECT_NE(s.status().message().find("--layers"), std::string::npos);
  }
}

TEST(Placement, BalancedCoversEveryLayerOnce) {
  for (int layers : {1, 5, 8, 12, 32}) {
    for (int stages = 1; stages <= std::min(layers, 4); ++stages) {
      auto r = BalancedPlacement(Config(layers), stages);
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(static_cast<int>(r->size()), stages);
      int64_t next = 0;
      for (const LayerRange& x : *r) {
        EXPECT_EQ(x.begin, next);
        EXPECT_GT(x.end, x.begin);
        next = x.end;
      }
      EXPECT_EQ(next, layers);
    }
  }
  EXPECT_FALSE(BalancedPlacement(Config(2), 3).ok());
}

TEST(Placement, LastStageCarriesTheHeadSoGetsFewerLayers) {
  auto r = BalancedPlacement(Config(8, /*vocab=*/32000), 2);
  ASSERT_TRUE(r.ok());
  EXPECT_GT((*r)[0].end - (*r)[0].begin, (*r)[1].end - (*r)[1].begin);
  auto even = BalancedPlacement(Config(8, /*vocab=*/8), 2);
  EXPECT_EQ((*even)[0], (LayerRange{0, 4}));
}

class Validation : public ::testing::Test {
 protected:
  ModelLimits limits_{"stories260K", 512, 512};
  v1::GenerateRequest Good() {
    v1::GenerateRequest r;
    r.set_text("hi");
    r.set_max_tokens(8);
    return r;
  }
  void ExpectField(const v1::GenerateRequest& r, const std::string& field) {
    absl::Status s = ValidateGenerateRequest(r, limits_);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_EQ(s.message().substr(0, field.size()), field) << s;
  }
};

TEST_F(Validation, AcceptsAGoodRequestAndFillsDefaults) {
  EXPECT_TRUE(ValidateGenerateRequest(Good(), limits_).ok());
  v1::StepSampling s = ResolveSampling(Good());
  EXPECT_EQ(s.temperature(), 1.0f);
  EXPECT_EQ(s.top_p(), 1.0f);
  EXPECT_EQ(s.repetition_penalty(), 1.0f);
}

TEST_F(Validation, NamesTheField) {
  auto r = Good();
  r.set_text("");
  ExpectField(r, "prompt");
  r = Good();
  r.set_max_tokens(0);
  ExpectField(r, "max_tokens");
  r = Good();
  r.set_max_tokens(512);
  ExpectField(r, "max_tokens");
  r = Good();
  r.mutable_sampling()->set_temperature(-1);
  ExpectField(r, "sampling.temperature");
  r = Good();
  r.mutable_sampling()->set_temperature(std::nanf(""));
  ExpectField(r, "sampling.temperature");
  r = Good();
  r.mutable_sampling()->set_top_p(0);
  ExpectField(r, "sampling.top_p");
  r = Good();
  r.mutable_sampling()->set_top_p(1.01f);
  ExpectField(r, "sampling.top_p");
  r = Good();
  r.set_model("gpt-9");
  ExpectField(r, "model");
  r = Good();
  for (int i = 0; i < 17; ++i) r.add_stop("x");
  ExpectField(r, "stop");
  r = Good();
  r.mutable_chat()->add_messages()->set_role("");
  ExpectField(r, "chat.messages[0].role");
  r = Good();
  r.set_logprobs(true);
  r.set_top_logprobs(21);
  ExpectField(r, "top_logprobs");
}

TEST_F(Validation, PromptLength) {
  EXPECT_TRUE(ValidatePromptLength(10, 502, limits_).ok());
  EXPECT_EQ(ValidatePromptLength(512, 1, limits_).message().substr(0, 6), "prompt");
  EXPECT_EQ(ValidatePromptLength(10, 503, limits_).message().substr(0, 10), "max_tokens");
}

}  // namespace
}  // namespace shardserve
