// Whole-model checks on the GPU: stories260K greedy decoding gives the CPU's tokens (and
// llama2.c's, from ../shared/golden), and a synthetic BF16 model gives the CPU's logits within
// BF16 tolerance and the same greedy tokens wherever the CPU's choice is not a near-tie.
#include <filesystem>
#include <fstream>
#include <numeric>

#include "gtest/gtest.h"
#include "model/config.h"
#include "model/generator.h"
#include "model/stage.h"
#include "model/synth.h"
#include "nlohmann/json.hpp"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace shardserve {
namespace {

namespace fs = std::filesystem;
const char kModel[] = "../shared/models/stories260K";
const char kGolden[] = "../shared/golden/stories260K/once_upon_a_time.json";

// Greedy decoding step by step, returning ids and the logits of every step.
struct GreedyRun {
  std::vector<int32_t> ids;
  std::vector<std::vector<float>> logits;
};

GreedyRun Greedy(ModelStage& stage, const std::vector<int32_t>& prompt, int steps) {
  GreedyRun run;
  SequenceStep step;
  step.block_table.resize(stage.kv_spec().num_blocks);
  std::iota(step.block_table.begin(), step.block_table.end(), 0);
  step.tokens = prompt;
  step.compute_logits = true;
  for (int i = 0; i < steps; ++i) {
    auto out = stage.Forward({&step, 1}, {});
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return run;
    const int32_t next = static_cast<int32_t>(std::max_element(out->data.begin(), out->data.end()) -
                                              out->data.begin());
    run.ids.push_back(next);
    run.logits.push_back(std::move(out->data));
    step.start_pos += static_cast<int64_t>(step.tokens.size());
    step.tokens = {next};
  }
  return run;
}

TEST(CudaModelTest, Stories260KGreedyMatchesCpu) {
  std::unique_ptr<Backend> gpu;
  SHARDSERVE_GET_CUDA_BACKEND_OR_SKIP(gpu);
  ASSERT_TRUE(fs::exists(kModel)) << "missing " << kModel;
  auto cpu = NewCpuBackend({.threads = 2, .reference = true});
  auto cpu_stage = LoadStage(kModel, {}, {}, cpu.get());
  auto gpu_stage = LoadStage(kModel, {}, {}, gpu.get());
  ASSERT_TRUE(cpu_stage.ok()) << cpu_stage.status();
  ASSERT_TRUE(gpu_stage.ok()) << gpu_stage.status();
  std::ifstream in(kGolden);
  const auto g = nlohmann::json::parse(in);
  const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
  const auto expected = g["greedy_ids"].get<std::vector<int32_t>>();
  const GreedyRun want = Greedy(**cpu_stage, prompt, static_cast<int>(expected.size()));
  const GreedyRun got = Greedy(**gpu_stage, prompt, static_cast<int>(expected.size()));
  EXPECT_EQ(want.ids, expected);
  EXPECT_EQ(got.ids, want.ids);
  for (size_t i = 0; i < got.logits.size() && i < want.logits.size(); ++i) {
    EXPECT_LE(testing_cuda::MaxAbsDiff(got.logits[i], want.logits[i]), 1e-3f) << "step " << i;
  }
  // The generator (the `generate` path) on the GPU stage too.
  GenerateOptions opts;
  opts.max_tokens = static_cast<int64_t>(expected.size());
  auto gen = Generate(**gpu_stage, prompt, opts);
  ASSERT_TRUE(gen.ok()) << gen.status();
  EXPECT_EQ(gen->ids, expected);
}

TEST(CudaModelTest, SyntheticBf16MatchesCpu) {
  std::unique_ptr<Backend> gpu;
  SHARDSERVE_GET_CUDA_BACKEND_OR_SKIP(gpu);
  auto config = SynthConfigByName("tiny-llama3");
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string dir = (fs::temp_directory_path() / "shardserve_cuda_synth_bf16").string();
  fs::remove_all(dir);
  ASSERT_TRUE(WriteSynthModel(*config, dir, {.dtype = DType::kBF16, .seed = 3}).ok());
  auto cpu = NewCpuBackend({.threads = 2, .reference = true});
  auto cpu_stage = LoadStage(dir, {}, {}, cpu.get());
  auto gpu_stage = LoadStage(dir, {}, {}, gpu.get());
  ASSERT_TRUE(cpu_stage.ok()) << cpu_stage.status();
  ASSERT_TRUE(gpu_stage.ok()) << gpu_stage.status();
  // A 20-token prompt takes the tensor-core GEMM path; decode steps take the GEMV path.
  std::vector<int32_t> prompt(20);
  for (int i = 0; i < 20; ++i) prompt[i] = 3 + (i * 37) % 400;
  const GreedyRun want = Greedy(**cpu_stage, prompt, 24);
  const GreedyRun got = Greedy(**gpu_stage, prompt, 24);
  ASSERT_EQ(got.ids.size(), want.ids.size());
  const float tol = 0.05f;  // BF16-rounded activations in prefill, over a few layers
  for (size_t i = 0; i < want.ids.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_LE(testing_cuda::MaxAbsDiff(got.logits[i], want.logits[i]), tol);
    std::vector<float> sorted = want.logits[i];
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] > 2 * tol) {
      EXPECT_EQ(got.ids[i], want.ids[i]);
    }
    if (got.ids[i] != want.ids[i]) break;  // the sequences diverge from here on
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shardserve
