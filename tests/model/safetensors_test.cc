// The safetensors reader and the model loader reject every malformed input with an error that
// names the problem.
#include "model/safetensors.h"

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/stage.h"
#include "model/synth.h"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

std::string Header(const std::string& json) {
  std::string s(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(s.data(), &n, 8);
  return s + json;
}

TEST(SafetensorsTest, ReadsWhatItWrites) {
  TempDir dir;
  std::vector<TensorSpec> specs = {{"a", DType::kF32, {2, 3}}, {"b", DType::kBF16, {4}}};
  ASSERT_TRUE(WriteSafetensors(dir / "m.safetensors", specs, [](size_t i, uint8_t* dst) {
                std::memset(dst, static_cast<int>(i + 1), i == 0 ? 24 : 8);
              }).ok());
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  auto a = (*f)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->nbytes, 24u);
  EXPECT_EQ(static_cast<const uint8_t*>(a->data)[23], 1);
  auto b = (*f)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype, DType::kBF16);
  EXPECT_EQ(static_cast<const uint8_t*>(b->data)[0], 2);
  EXPECT_THAT(std::string((*f)->Get("c").status().message()), HasSubstr("no tensor named 'c'"));
}

TEST(SafetensorsTest, RejectsTruncatedFile) {
  TempDir dir;
  ASSERT_TRUE(
      WriteSafetensors(dir / "m.safetensors", {{"a", DType::kF32, {64}}}, [](size_t, uint8_t* d) {
        std::memset(d, 0, 256);
      }).ok());
  std::string bytes = ReadAll(dir / "m.safetensors");
  WriteAll(dir / "m.safetensors", bytes.substr(0, bytes.size() - 100));
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("run past the end of the data"));
  WriteAll(dir / "m.safetensors", bytes.substr(0, 5));
  f = SafetensorsFile::Open(dir / "m.safetensors");
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("truncated"));
}

TEST(SafetensorsTest, RejectsHeaderLengthPastEnd) {
  TempDir dir;
  std::string s(8, '\0');
  const uint64_t n = 1ull << 40;
  std::memcpy(s.data(), &n, 8);
  WriteAll(dir / "m.safetensors", s + "{}");
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("runs past the end of the file"));
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  TempDir dir;
  WriteAll(dir / "m.safetensors",
           Header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                  R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})") +
               std::string(24, '\0'));
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("tensors overlap"));
}

TEST(SafetensorsTest, RejectsOutOfFileOffsets) {
  TempDir dir;
  WriteAll(dir / "m.safetensors",
           Header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[1000,1016]}})") +
               std::string(16, '\0'));
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("tensor 'a'"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("run past the end"));
}

TEST(SafetensorsTest, RejectsSizeThatDisagreesWithShape) {
  TempDir dir;
  WriteAll(
      dir / "m.safetensors",
      Header(R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})") + std::string(16, '\0'));
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("needs 20"));
}

TEST(SafetensorsTest, RejectsNegativeAndOverflowingShapes) {
  TempDir dir;
  WriteAll(dir / "m.safetensors",
           Header(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})"));
  EXPECT_FALSE(SafetensorsFile::Open(dir / "m.safetensors").ok());
  WriteAll(dir / "m.safetensors",
           Header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"));
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("overflows"));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open("/nonexistent/m.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("/nonexistent/m.safetensors"));
}

class ModelLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = SynthConfigByName("tiny-llama");
    ASSERT_TRUE(c.ok());
    config_ = *c;
    ASSERT_TRUE(WriteSynthModel(config_, dir_.path(), {.threads = 1}).ok());
  }
  absl::Status Load() {
    auto backend = NewCpuBackend({.threads = 1});
    return LoadStage(dir_.path(), {}, {}, backend.get()).status();
  }
  // Rewrites one tensor's header entry in place by re-writing the file with a changed spec.
  void RewriteWith(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    auto f = SafetensorsFile::Open(dir_ / "model.safetensors");
    ASSERT_TRUE(f.ok());
    std::vector<TensorSpec> specs;
    for (const auto& n : (*f)->Names()) {
      auto t = (*f)->Get(n);
      specs.push_back({n, t->dtype, t->shape});
      if (n == name) specs.back() = {n, dtype, shape};
    }
    ASSERT_TRUE(WriteSafetensors(dir_ / "new.safetensors", specs, [&](size_t i, uint8_t* d) {
                  std::memset(d, 0, specs[i].nbytes());
                }).ok());
    std::filesystem::rename(dir_ / "new.safetensors", dir_ / "model.safetensors");
  }
  TempDir dir_;
  ModelConfig config_;
};

TEST_F(ModelLoadTest, LoadsAsWritten) { EXPECT_TRUE(Load().ok()) << Load(); }

TEST_F(ModelLoadTest, ShapeMismatchNamesTensorAndShapes) {
  RewriteWith("model.layers.2.mlp.up_proj.weight", DType::kF32, {171, 64});
  const absl::Status s = Load();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.2.mlp.up_proj.weight"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("[171, 64]"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("expected [172, 64]"));
}

TEST_F(ModelLoadTest, DtypeMismatchNamesTensor) {
  RewriteWith("model.layers.0.self_attn.q_proj.weight", DType::kBF16, {64, 64});
  const absl::Status s = Load();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("BF16"));
}

TEST_F(ModelLoadTest, MissingTensorIsNamed) {
  auto f = SafetensorsFile::Open(dir_ / "model.safetensors");
  ASSERT_TRUE(f.ok());
  std::vector<TensorSpec> specs;
  for (const auto& n : (*f)->Names()) {
    if (n == "model.norm.weight") continue;
    auto t = (*f)->Get(n);
    specs.push_back({n, t->dtype, t->shape});
  }
  f->reset();
  ASSERT_TRUE(WriteSafetensors(dir_ / "model.safetensors", specs, [&](size_t i, uint8_t* d) {
                std::memset(d, 0, specs[i].nbytes());
              }).ok());
  const absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.norm.weight"));
}

TEST_F(ModelLoadTest, NegativeOrNanConfigValuesAreRejected) {
  std::string config = ReadAll(dir_ / "config.json");
  std::string neg = config;
  neg.replace(neg.find("\"num_hidden_layers\": 5"), 22, "\"num_hidden_layers\": -5");
  WriteAll(dir_ / "config.json", neg);
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("num_hidden_layers"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("must be positive"));

  std::string nan = config;
  const size_t at = nan.find("\"rms_norm_eps\"");
  nan.replace(at, nan.find(',', at) - at, "\"rms_norm_eps\": NaN");
  WriteAll(dir_ / "config.json", nan);
  s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("config.json"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("NaN"));

  std::string neg_eps = config;
  neg_eps.replace(at, neg_eps.find(',', at) - at, "\"rms_norm_eps\": -1e-5");
  WriteAll(dir_ / "config.json", neg_eps);
  s = Load();
  EXPECT_THAT(std::string(s.message()), HasSubstr("rms_norm_eps"));
}

TEST_F(ModelLoadTest, MissingFilesAreNamed) {
  std::filesystem::remove(dir_ / "model.safetensors");
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
  std::filesystem::remove(dir_ / "config.json");
  s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("config.json"));
}

TEST_F(ModelLoadTest, UnknownArchitectureIsNamed) {
  std::string config = ReadAll(dir_ / "config.json");
  config.replace(config.find("LlamaForCausalLM"), 16, "GPTNeoXForCausalLM");
  config.replace(config.find("\"llama\""), 7, "\"gpt_neox\"");
  WriteAll(dir_ / "config.json", config);
  const absl::Status s = Load();
  EXPECT_THAT(std::string(s.message()), HasSubstr("unsupported architecture 'GPTNeoXForCausalLM'"));
}

}  // namespace
}  // namespace shardserve
