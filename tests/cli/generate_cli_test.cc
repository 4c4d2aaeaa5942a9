// `shardserve generate` and `shardserve synth` as a user runs them: bad model files and flags end
// with a non-zero exit and exactly one line on stderr that names the problem; good runs print
// the contract's JSON.
#include <cstring>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using testing::BinaryPath;
using ::testing::HasSubstr;
using testing::ReadAll;
using testing::RunCommand;
using testing::TempDir;
using testing::WriteAll;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

class GenerateCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto r = RunCommand(BinaryPath("shardserve") + " synth --like tiny-llama --out " +
                              Quote(dir_.path()) + " --seed 3 --threads 1");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  testing::CommandResult Generate(const std::string& extra = "") {
    return RunCommand(BinaryPath("shardserve") + " generate --model " + Quote(dir_.path()) +
                      " --prompt 'Once upon a time' --max-tokens 8 --temperature 0 --threads 1 " +
                      extra);
  }
  // The failure contract: non-zero exit, one line on stderr, containing `what`.
  void ExpectOneLineError(const testing::CommandResult& r, const std::string& what) {
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.exit_code, 128) << "crashed: " << r.err;
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("error: "));
    EXPECT_THAT(r.err, HasSubstr(what));
  }
  std::string Weights() const { return dir_ / "model.safetensors"; }
  TempDir dir_;
};

TEST_F(GenerateCliTest, UnseededSamplingDiffersAndTheSeedShownReplaysIt) {
  auto run = [&](const std::string& extra) {
    const auto r = Generate("--json --temperature 1 --max-tokens 24 " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out, nullptr, false);
  };
  const auto a = run(""), b = run("");
  ASSERT_TRUE(a.contains("seed") && b.contains("seed")) << a << b;
  EXPECT_NE(a["seed"], b["seed"]);
  EXPECT_NE(a["ids"], b["ids"]);
  const auto replay = run("--seed " + std::to_string(a["seed"].get<uint64_t>()));
  EXPECT_EQ(replay["ids"], a["ids"]);
}

TEST_F(GenerateCliTest, AMissingModelAndTokensPastTheContextAreNamed) {
  const auto missing =
      RunCommand(BinaryPath("shardserve") + " generate --model /nonexistent/model --prompt hi");
  ExpectOneLineError(missing, "--model /nonexistent/model: no such file or folder");
  EXPECT_EQ(missing.exit_code, 2);
  const auto past = Generate("--max-tokens 100000");
  ExpectOneLineError(past, "is past the context of");
  EXPECT_EQ(past.exit_code, 2);
}

TEST_F(GenerateCliTest, JsonOutputFollowsTheContract) {
  const auto r = Generate("--json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const char* key :
       {"prompt_ids", "ids", "text", "prefill_tokens_per_s", "decode_tokens_per_s"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["ids"].size(), 8u);
  EXPECT_EQ(j["prompt_ids"][0], 1);  // BOS
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0.0);
}

TEST_F(GenerateCliTest, TruncatedWeights) {
  const std::string bytes = ReadAll(Weights());
  WriteAll(Weights(), bytes.substr(0, bytes.size() / 2));
  ExpectOneLineError(Generate(), "run past the end");
}

TEST_F(GenerateCliTest, HeaderLengthPastEndOfFile) {
  std::string bytes = ReadAll(Weights());
  const uint64_t huge = uint64_t{1} << 50;
  std::memcpy(bytes.data(), &huge, 8);
  WriteAll(Weights(), bytes);
  ExpectOneLineError(Generate(), "header length");
}

TEST_F(GenerateCliTest, OverlappingTensorOffsets) {
  std::string bytes = ReadAll(Weights());
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  // Point the second layer's q_proj at the first layer's bytes.
  header["model.layers.1.self_attn.q_proj.weight"]["data_offsets"] =
      header["model.layers.0.self_attn.q_proj.weight"]["data_offsets"];
  std::string text = header.dump();
  text.resize(n, ' ');  // same length keeps the data section in place
  WriteAll(Weights(), bytes.substr(0, 8) + text + bytes.substr(8 + n));
  ExpectOneLineError(Generate(), "tensors overlap");
}

TEST_F(GenerateCliTest, OutOfFileTensorOffsets) {
  std::string bytes = ReadAll(Weights());
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  header["model.norm.weight"]["data_offsets"] = {bytes.size() * 2, bytes.size() * 2 + 256};
  std::string text = header.dump();
  ASSERT_LE(text.size(), n);
  text.resize(n, ' ');
  WriteAll(Weights(), bytes.substr(0, 8) + text + bytes.substr(8 + n));
  ExpectOneLineError(Generate(), "model.norm.weight");
}

TEST_F(GenerateCliTest, ShapeThatDisagreesWithConfig) {
  std::string config = ReadAll(dir_ / "config.json");
  config.replace(config.find("\"intermediate_size\": 172"), 24, "\"intermediate_size\": 160");
  WriteAll(dir_ / "config.json", config);
  ExpectOneLineError(Generate(), "expected [160, 64]");
}

TEST_F(GenerateCliTest, DtypeThatDisagreesWithConfig) {
  std::string config = ReadAll(dir_ / "config.json");
  config.replace(config.find("\"float32\""), 9, "\"bfloat16\"");
  WriteAll(dir_ / "config.json", config);
  ExpectOneLineError(Generate(), "torch_dtype");
}

TEST_F(GenerateCliTest, NanAndNegativeConfigValues) {
  const std::string config = ReadAll(dir_ / "config.json");
  std::string nan = config;
  const size_t at = nan.find("\"rope_theta\"");
  nan.replace(at, nan.find(',', at) - at, "\"rope_theta\": NaN");
  WriteAll(dir_ / "config.json", nan);
  ExpectOneLineError(Generate(), "config.json");
  std::string neg = config;
  neg.replace(neg.find("\"num_attention_heads\": 8"), 24, "\"num_attention_heads\": -8");
  WriteAll(dir_ / "config.json", neg);
  ExpectOneLineError(Generate(), "num_attention_heads");
}

TEST_F(GenerateCliTest, MissingFiles) {
  std::filesystem::remove(Weights());
  ExpectOneLineError(Generate(), "model.safetensors");
  ExpectOneLineError(
      RunCommand(BinaryPath("shardserve") + " generate --model /nonexistent/model --prompt hi"),
      "/nonexistent/model");
}

TEST_F(GenerateCliTest, BadFlags) {
  ExpectOneLineError(Generate("--temperature -1"), "--temperature");
  ExpectOneLineError(Generate("--top-p 0"), "--top-p");
  ExpectOneLineError(Generate("--no-such-flag"), "--no-such-flag");
  ExpectOneLineError(Generate("--max-tokens many"), "--max-tokens");
  ExpectOneLineError(Generate("--quantize q3"), "--quantize");
  ExpectOneLineError(Generate("--backend tpu"), "--backend");
  ExpectOneLineError(
      RunCommand(BinaryPath("shardserve") + " synth --like gpt-5 --out " + Quote(dir_ / "x")),
      "unknown --like shape 'gpt-5'");
}

}  // namespace
}  // namespace shardserve
