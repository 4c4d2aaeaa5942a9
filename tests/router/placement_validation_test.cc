#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/synth.h"
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
    if (!s.ok()) {
      EXPECT_NE(s.status().message().find("--layers"), std::string::npos);
    }
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

TEST(Placement, EmbeddingAndHeadWeighOnTheEndStages) {
  // A 32000 x 64 embedding (and as large a head) outweighs many 64-wide layers: the end stages
  // get one layer each and the middle stage the rest.
  auto r = BalancedPlacement(Config(8, /*vocab=*/32000), 3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(FormatLayerRanges(*r), "0-0,1-6,7-7");
  // Embedding and head weigh the same (the head adds only the final norm): an even split.
  auto even = BalancedPlacement(Config(8, /*vocab=*/32000), 2);
  EXPECT_EQ((*even)[0], (LayerRange{0, 4}));
}

// DeepSeek-V3's layout at a small size: 3 dense layers, then 5 MoE layers that each hold 16
// routed experts and a shared one, so an MoE layer weighs about three dense ones.
ModelConfig DeepseekWithCheapDenseLayers() {
  ModelConfig c = *SynthConfigByName("deepseek-v3-tiny");
  c.num_layers = 8;
  c.deepseek.first_k_dense_replace = 3;
  c.deepseek.num_nextn_predict_layers = 0;
  return c;
}

// The smallest possible max over stages of bytes / speed, over every contiguous split.
double BestMaxStageCost(const ModelConfig& c, int stages, const std::vector<double>& speeds) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<LayerRange> ranges;
  std::function<void(int64_t)> place = [&](int64_t begin) {
    const int s = static_cast<int>(ranges.size());
    if (s == stages - 1) {
      ranges.push_back({begin, c.num_layers});
      double worst = 0;
      for (int i = 0; i < stages; ++i) {
        worst = std::max(worst, StageWeightBytes(c, ranges[i]) / (speeds.empty() ? 1 : speeds[i]));
      }
      best = std::min(best, worst);
      ranges.pop_back();
      return;
    }
    for (int64_t end = begin + 1; end <= c.num_layers - (stages - 1 - s); ++end) {
      ranges.push_back({begin, end});
      place(end);
      ranges.pop_back();
    }
  };
  place(0);
  return best;
}

TEST(Placement, DeepseekIsBalancedByWeightBytesNotLayerCount) {
  const ModelConfig c = DeepseekWithCheapDenseLayers();
  const int64_t dense = LayerParameterCount(c, 0), moe = LayerParameterCount(c, 3);
  ASSERT_TRUE(c.deepseek.IsMoeLayer(3) && !c.deepseek.IsMoeLayer(2));
  ASSERT_GT(moe, 2 * dense);

  auto r = BalancedPlacement(c, 2);
  ASSERT_TRUE(r.ok()) << r.status();
  // The first stage holds the three light dense layers, so it takes more layers.
  EXPECT_GT((*r)[0].end - (*r)[0].begin, (*r)[1].end - (*r)[1].begin) << FormatLayerRanges(*r);

  int64_t largest_layer = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    largest_layer =
        std::max<int64_t>(largest_layer, LayerParameterCount(c, l) * DTypeSize(c.dtype));
  }
  for (int stages = 1; stages <= 4; ++stages) {
    auto split = BalancedPlacement(c, stages);
    ASSERT_TRUE(split.ok());
    int64_t total = 0, worst = 0;
    for (const LayerRange& x : *split) {
      total += StageWeightBytes(c, x);
      worst = std::max(worst, StageWeightBytes(c, x));
    }
    const std::string where = absl::StrCat(stages, " stages: ", FormatLayerRanges(*split));
    EXPECT_LE(worst, total / stages + largest_layer) << where;
    EXPECT_EQ(worst, BestMaxStageCost(c, stages, {})) << where;
  }
}

TEST(Placement, SpeedsScaleEachStagesShareOfTheBytes) {
  const ModelConfig c = DeepseekWithCheapDenseLayers();
  for (const std::vector<double>& speeds :
       {std::vector<double>{1, 3}, {3, 1}, {1, 1, 2}, {2, 1, 1, 1}}) {
    const int stages = static_cast<int>(speeds.size());
    auto split = BalancedPlacement(c, stages, speeds);
    ASSERT_TRUE(split.ok());
    double worst = 0;
    for (int s = 0; s < stages; ++s) {
      worst = std::max(worst, StageWeightBytes(c, (*split)[s]) / speeds[s]);
    }
    EXPECT_DOUBLE_EQ(worst, BestMaxStageCost(c, stages, speeds)) << FormatLayerRanges(*split);
  }
  auto slow_first = BalancedPlacement(c, 2, {1, 3});
  auto fast_first = BalancedPlacement(c, 2, {3, 1});
  EXPECT_LT((*slow_first)[0].end, (*fast_first)[0].end);
}

TEST(Placement, StageBytesCountEmbeddingFirstAndHeadLast) {
  ModelConfig c = Config(4);
  c.tie_word_embeddings = true;  // the last stage still holds the head matrix
  c.dtype = DType::kBF16;
  const int64_t layer = LayerParameterCount(c, 0);
  EXPECT_EQ(StageWeightBytes(c, {0, 2}), 2 * (2 * layer + 512 * 64));
  EXPECT_EQ(StageWeightBytes(c, {2, 4}), 2 * (2 * layer + 512 * 64 + 64));
  EXPECT_EQ(StageWeightBytes(c, {1, 3}), 2 * 2 * layer);
}

TEST(Placement, DefaultKvBlocksSizeMlaByItsLatentCache) {
  // DeepSeek-V2-Lite's shapes: 576 cached values per token per layer (512 latent + 64 rotary
  // key), where per-head keys and values would be 2 x 16 x 192 = 6144.
  ModelConfig c = *SynthConfigByName("deepseek-v2-lite-shape");
  c.max_position_embeddings = 4096;
  const std::vector<LayerRange> ranges = {{0, 14}, {14, 27}};
  const int64_t block = 16, per_context = 4096 / block;
  const int64_t mla_block_bytes = 576 * 4 * block * 14;
  EXPECT_EQ(DefaultKvBlocks(c, ranges, block, 64), (int64_t{1} << 30) / mla_block_bytes);
  EXPECT_EQ(DefaultKvBlocks(c, ranges, block, 2), 2 * per_context);
  // Never less than one full context, even past the cap.
  c.max_position_embeddings = 163840;
  EXPECT_EQ(DefaultKvBlocks(c, ranges, block, 64), 163840 / block);

  const ModelConfig llama = Config(5);  // 2 x 4 KV heads x 8 values
  EXPECT_EQ(DefaultKvBlocks(llama, {{0, 3}, {3, 5}}, block, 64), 64 * (512 / block));
  ModelConfig big = Config(32);
  big.max_position_embeddings = 1 << 20;
  big.num_kv_heads = 8;
  big.head_dim = 128;
  EXPECT_EQ(DefaultKvBlocks(big, {{0, 32}}, block, 1), (1 << 20) / block);
  big.max_position_embeddings = 4096;
  EXPECT_EQ(DefaultKvBlocks(big, {{0, 32}}, block, 64),
            (int64_t{1} << 30) / (2 * 8 * 128 * 4 * block * 32));
}

// KV sizing from the workers' Describe: GPUs fill what their weights and workspace leave
// (workers on one GPU split it), simulated devices only cap the default, and a device that
// cannot hold one context is an error naming it.
TEST(Placement, KvBlocksForDevicesFillGpusAndCapSimulatedDevices) {
  ModelConfig c = *SynthConfigByName("llama3-70b");
  c.max_position_embeddings = 8192;
  c.dtype = DType::kBF16;
  const std::vector<LayerRange> ranges = {{0, 40}, {40, 80}};
  const KvSizing sizing{
      .block_size = 16, .blocks_per_context = 512, .max_step_tokens = 2048, .max_seqs = 64};
  DeviceProfile bf16;  // weights 2 bytes, pages F32
  bf16.weight_bytes_per_param = 2;
  bf16.kv_bytes_per_value = 4;
  auto gpu = [&](int stage, const std::string& id, double gib) {
    return KvDevice{.stage = stage,
                    .worker = absl::StrCat("w", stage, id),
                    .name = "cuda:0 (H200)",
                    .gpu = true,
                    .gpu_id = id,
                    .free_bytes = gib * (1 << 30),
                    .precision = bf16};
  };
  // What stage s holds on `gib` free: the weights and the workspace off, then whole blocks of
  // 40 layers x 2048 F32 values x 16 tokens.
  auto fits = [&](int s, double gib) {
    const LayerRange& r = ranges[s];
    const double left = gib * (1 << 30) - StageWeightBytesAt(c, r.begin, r.end, bf16) -
                        StageWorkspaceBytes(c, r.end == 80, 2048, 64);
    return static_cast<int64_t>(left / (40.0 * 2048 * 4 * 16));
  };
  // Two H200s (about 127 GiB free each): the smaller room of the two stages, not the default.
  auto blocks = KvBlocksForDevices(c, ranges, {gpu(0, "a", 127), gpu(1, "b", 127)}, 1000, sizing);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, std::min(fits(0, 127), fits(1, 127)));
  EXPECT_GT(*blocks, 1000);
  // Both stages' workers on one GPU share it: each has half.
  blocks = KvBlocksForDevices(c, ranges, {gpu(0, "a", 254), gpu(1, "a", 254)}, 1000, sizing);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, std::min(fits(0, 127), fits(1, 127)));
  // A simulated device caps the default and never raises it.
  KvDevice sim = gpu(0, "s", 127);
  sim.gpu = false;
  sim.name = "sim h200";
  blocks = KvBlocksForDevices(c, ranges, {sim}, 1000, sizing);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, 1000);
  sim.free_bytes = StageWeightBytesAt(c, 0, 40, bf16) + 600.0 * 40 * 2048 * 4 * 16;
  blocks = KvBlocksForDevices(c, ranges, {sim}, 1000, sizing);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, 600);
  // CPU workers only: the default stands.
  blocks = KvBlocksForDevices(c, ranges, {}, 1000, sizing);
  ASSERT_TRUE(blocks.ok());
  EXPECT_EQ(*blocks, 1000);
  // 68 GiB cannot hold 40 layers of the 70B model in BF16 with the embedding (65.7 GiB), the
  // workspace (1.2 GiB) and a context of F32 pages (2.5 GiB).
  blocks = KvBlocksForDevices(c, ranges, {gpu(0, "a", 68), gpu(1, "b", 127)}, 1000, sizing);
  ASSERT_FALSE(blocks.ok());
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(blocks.status().message().find("layers 0-39 on w0a (cuda:0 (H200), 68.00 GiB free)"),
            std::string::npos)
      << blocks.status();
  EXPECT_NE(blocks.status().message().find("--gpu-memory-fraction"), std::string::npos);
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
  v1::StepSampling s = ResolveSampling(Good(), 77);
  EXPECT_EQ(s.temperature(), 1.0f);
  EXPECT_EQ(s.top_p(), 1.0f);
  EXPECT_EQ(s.repetition_penalty(), 1.0f);
  EXPECT_EQ(s.seed(), 77u) << "no seed in the request: the fresh one";
  auto seeded = Good();
  seeded.mutable_sampling()->set_seed(0);
  EXPECT_EQ(ResolveSampling(seeded, 77).seed(), 0u) << "seed 0 given is seed 0";
}

TEST_F(Validation, UnsetMaxTokensIsTheRoomLeftInTheContext) {
  auto r = Good();
  r.set_max_tokens(0);
  EXPECT_TRUE(ValidateGenerateRequest(r, limits_).ok());
  EXPECT_TRUE(ValidatePromptLength(490, 0, limits_).ok());
  EXPECT_EQ(ResolveMaxTokens(0, 490, limits_, 0), limits_.context - 490);
  EXPECT_EQ(ResolveMaxTokens(0, 490, limits_, 8), 8) << "capped by --max-tokens-limit";
  EXPECT_EQ(ResolveMaxTokens(5, 490, limits_, 0), 5) << "a given max_tokens stays";
}

TEST_F(Validation, NamesTheField) {
  auto r = Good();
  r.set_text("");
  ExpectField(r, "prompt");
  r = Good();
  r.set_max_tokens(-1);
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
