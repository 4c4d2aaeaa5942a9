// stories260K against llama2.c run.c's greedy continuations and logits (../shared/golden).
#include <filesystem>
#include <fstream>
#include <numeric>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/generator.h"
#include "model/stage.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

namespace fs = std::filesystem;
const char kModel[] = "../shared/models/stories260K";
const char kGolden[] = "../shared/golden/stories260K";

std::vector<std::string> GoldenFiles() {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(kGolden)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".json" && name != "tokenizer_cases.json")
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

struct GoldenCase {
  const char* model;
  bool reference_kernels;
};

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenTest, GreedyIdsAndLogitsMatchRunC) {
  const std::string model = GetParam().model;
  ASSERT_TRUE(fs::exists(model)) << "missing " << model << " (../shared must be beside the repo)";
  auto files = GoldenFiles();
  ASSERT_EQ(files.size(), 5u);
  auto backend = NewCpuBackend({.threads = 2, .reference = GetParam().reference_kernels});
  auto stage = LoadStage(model, {}, {}, backend.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const auto g = ReadJson(file);
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto expected = g["greedy_ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> seq = prompt;
    SequenceStep step;
    step.block_table.resize((*stage)->kv_spec().num_blocks);
    std::iota(step.block_table.begin(), step.block_table.end(), 0);
    step.tokens = prompt;
    step.start_pos = 0;
    step.compute_logits = true;
    int logits_checked = 0;
    std::vector<int32_t> got;
    for (size_t i = 0; i < expected.size(); ++i) {
      auto out = (*stage)->Forward({&step, 1}, {});
      ASSERT_TRUE(out.ok()) << out.status();
      ASSERT_EQ(out->rows, 1);
      const int64_t pos = step.start_pos + static_cast<int64_t>(step.tokens.size()) - 1;
      const std::string key = std::to_string(pos);
      if (g["logits"].contains(key)) {
        const auto ref = g["logits"][key].get<std::vector<float>>();
        ASSERT_EQ(ref.size(), out->data.size());
        float max_diff = 0;
        for (size_t v = 0; v < ref.size(); ++v)
          max_diff = std::max(max_diff, std::fabs(ref[v] - out->data[v]));
        EXPECT_LE(max_diff, 1e-4f) << "logits at position " << pos;
        ++logits_checked;
      }
      const int32_t next = static_cast<int32_t>(
          std::max_element(out->data.begin(), out->data.end()) - out->data.begin());
      got.push_back(next);
      step.start_pos = pos + 1;
      step.tokens = {next};
    }
    EXPECT_EQ(got, expected);
    EXPECT_EQ(logits_checked, 4);

    GenerateOptions opts;
    opts.max_tokens = static_cast<int64_t>(expected.size());
    auto gen = Generate(**stage, prompt, opts);
    ASSERT_TRUE(gen.ok()) << gen.status();
    EXPECT_EQ(gen->ids, expected);
  }
}

const char kGguf[] = "../shared/models/stories260K/stories260K.gguf";

INSTANTIATE_TEST_SUITE_P(Paths, GoldenTest,
                         ::testing::Values(GoldenCase{kModel, false}, GoldenCase{kModel, true},
                                           GoldenCase{kGguf, false}),
                         [](const auto& info) {
                           return std::string(info.param.model == kGguf ? "Gguf" : "Safetensors") +
                                  (info.param.reference_kernels ? "Reference" : "Fast");
                         });

}  // namespace
}  // namespace shardserve
