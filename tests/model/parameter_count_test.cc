// LayerParameterCount, EmbeddingParameterCount and HeadParameterCount (model/config.h) against
// the tensors a synthesized model really holds, layer by layer, for dense Llama/Qwen2 shapes and
// DeepSeek-V2/V3 (MLA, dense and MoE layers, MTP modules); KvCacheValuesPerToken against what
// loaded stages report.
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/stage.h"
#include "model/synth.h"
#include "model/weights.h"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using testing::TempDir;

class ParameterCountTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    // "<shape>+tied": the shape with tied embeddings (no lm_head tensor).
    std::string name = GetParam();
    const bool tied = absl::EndsWith(name, "+tied");
    if (tied) name.resize(name.size() - 5);
    auto config = SynthConfigByName(name);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    if (tied) config_.tie_word_embeddings = true;
    ASSERT_TRUE(WriteSynthModel(config_, dir_.path(), {.seed = 1, .threads = 1}).ok());
    auto weights = OpenSafetensorsFolder(dir_.path());
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(*weights);
  }

  ModelConfig config_;
  TempDir dir_;
  std::unique_ptr<WeightSource> weights_;
};

TEST_P(ParameterCountTest, MatchesTheSynthesizedTensorsLayerByLayer) {
  // Element counts of the stored tensors: per "model.layers.<i>." prefix, and the rest by name.
  std::map<int64_t, int64_t> layer_elements;
  std::map<std::string, int64_t> other;
  for (const std::string& name : weights_->Names()) {
    auto t = weights_->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    constexpr absl::string_view kLayers = "model.layers.";
    if (absl::StartsWith(name, kLayers)) {
      const absl::string_view rest = absl::string_view(name).substr(kLayers.size());
      int64_t layer = -1;
      ASSERT_TRUE(absl::SimpleAtoi(rest.substr(0, rest.find('.')), &layer)) << name;
      layer_elements[layer] += t->numel();
    } else {
      other[name] += t->numel();
    }
  }
  const int64_t mtp = config_.deepseek.num_nextn_predict_layers;
  ASSERT_EQ(static_cast<int64_t>(layer_elements.size()), config_.num_layers + mtp);
  int64_t distinct = 0;
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    EXPECT_EQ(LayerParameterCount(config_, l), layer_elements[l]) << GetParam() << " layer " << l;
    if (l > 0 && layer_elements[l] != layer_elements[l - 1]) ++distinct;
  }
  // DeepSeek's first layer is dense and the rest MoE: the counts must differ there.
  EXPECT_EQ(distinct > 0, config_.is_deepseek()) << GetParam();

  EXPECT_EQ(EmbeddingParameterCount(config_), other["model.embed_tokens.weight"]);
  const int64_t head_matrix =
      config_.tie_word_embeddings ? other["model.embed_tokens.weight"] : other["lm_head.weight"];
  EXPECT_EQ(HeadParameterCount(config_), other["model.norm.weight"] + head_matrix);
  EXPECT_EQ(other.size(), config_.tie_word_embeddings ? 2u : 3u);
}

TEST_P(ParameterCountTest, KvCacheValuesPerTokenIsWhatStagesAllocate) {
  auto backend = NewCpuBackend({.threads = 1});
  auto stage = LoadStage(dir_.path(), {.layer_begin = 1, .layer_end = 3}, {}, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ((*stage)->KvBytesPerToken(), 2 * KvCacheValuesPerToken(config_) * 4);
  if (config_.is_deepseek()) {
    EXPECT_EQ(KvCacheValuesPerToken(config_),
              config_.deepseek.kv_lora_rank + config_.deepseek.qk_rope_head_dim);
  } else {
    EXPECT_EQ(KvCacheValuesPerToken(config_), 2 * config_.num_kv_heads * config_.head_dim);
  }
}

INSTANTIATE_TEST_SUITE_P(Synthetic, ParameterCountTest,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-llama+tied",
                                           "deepseek-v3-tiny", "deepseek-v2-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-' || ch == '+') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace shardserve
