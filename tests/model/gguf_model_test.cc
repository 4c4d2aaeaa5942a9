// GGUF models against the same weights in safetensors: identical logits for F32 (after undoing
// llama.cpp's q/k row order), and quantized weights (GGUF Q8_0 tensors, --quantize q8_0 / q4_0)
// within a documented tolerance of F32, with greedy top-1 agreement over 1,000 positions. The
// GGUF files are written by ExportGguf (`shardserve export-gguf`), so these also check that the
// exporter's q/k order, names and metadata round-trip, and its vocabulary tokenizes as the
// tokenizer.json it came from.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/gguf_export.h"
#include "model/gguf_model.h"
#include "model/stage.h"
#include "model/synth.h"
#include "model/tokenizer/tokenizer.h"
#include "model/weights.h"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using testing::TempDir;

// Writes `dir`'s safetensors model with `shardserve export-gguf`'s exporter.
void WriteGguf(const std::string& dir, const std::string& path, DType dtype) {
  absl::Status s = ExportGguf(dir, path, {.dtype = dtype, .progress = nullptr});
  ASSERT_TRUE(s.ok()) << s;
}

// Logits at every position of `tokens` (teacher-forced), one decode step per position.
std::vector<std::vector<float>> AllLogits(ModelStage& stage, const std::vector<int32_t>& tokens) {
  std::vector<std::vector<float>> out;
  SequenceStep s;
  s.block_table.resize(stage.kv_spec().num_blocks);
  std::iota(s.block_table.begin(), s.block_table.end(), 0);
  s.compute_logits = true;
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    s.tokens = {tokens[pos]};
    s.start_pos = static_cast<int64_t>(pos);
    auto r = stage.Forward({&s, 1}, {});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) break;
    out.push_back(r->data);
  }
  return out;
}

class GgufModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = SynthConfigByName("tiny-llama-8l");
    ASSERT_TRUE(c.ok());
    config_ = *c;
    config_.tie_word_embeddings = false;
    ASSERT_TRUE(WriteSynthModel(config_, dir_.path(), {.seed = 21, .threads = 1}).ok());
    // Two sequences of 500 positions: 1,000 positions compared in all.
    for (int s = 0; s < 2; ++s) {
      tokens_.emplace_back();
      for (int i = 0; i < 500; ++i) tokens_.back().push_back((i * 7919 + 13 + 101 * s) % 512);
    }
  }
  std::vector<std::vector<float>> Logits(const std::string& path, DType quantize = DType::kF32) {
    auto backend = NewCpuBackend({.threads = 2});
    auto stage = LoadStage(path, {.quantize = quantize}, {}, backend.get());
    EXPECT_TRUE(stage.ok()) << stage.status();
    if (!stage.ok()) return {};
    std::vector<std::vector<float>> all;
    for (const auto& seq : tokens_) {
      for (auto& l : AllLogits(**stage, seq)) all.push_back(std::move(l));
    }
    return all;
  }
  TempDir dir_;
  ModelConfig config_;
  std::vector<std::vector<int32_t>> tokens_;
};

struct Agreement {
  double max_rel_error = 0;  // max |diff| / max |logit| over all positions
  int top1_same = 0;
  int positions = 0;
};

Agreement Compare(const std::vector<std::vector<float>>& a,
                  const std::vector<std::vector<float>>& b) {
  Agreement r;
  double num = 0, den = 0;
  for (size_t p = 0; p < a.size() && p < b.size(); ++p) {
    for (size_t v = 0; v < a[p].size(); ++v) {
      num = std::max<double>(num, std::fabs(a[p][v] - b[p][v]));
      den = std::max<double>(den, std::fabs(b[p][v]));
    }
    const auto am = std::max_element(a[p].begin(), a[p].end()) - a[p].begin();
    const auto bm = std::max_element(b[p].begin(), b[p].end()) - b[p].begin();
    r.top1_same += am == bm;
    ++r.positions;
  }
  r.max_rel_error = num / den;
  return r;
}

TEST_F(GgufModelTest, F32GgufEqualsSafetensors) {
  const std::string gguf = dir_ / "model.gguf";
  WriteGguf(dir_.path(), gguf, DType::kF32);
  const auto st = Logits(dir_.path());
  const auto gg = Logits(gguf);
  ASSERT_EQ(st.size(), gg.size());
  float max_diff = 0;
  for (size_t p = 0; p < st.size(); ++p)
    for (size_t v = 0; v < st[p].size(); ++v)
      max_diff = std::max(max_diff, std::fabs(st[p][v] - gg[p][v]));
  EXPECT_LE(max_diff, 1e-5f);
}

TEST_F(GgufModelTest, QuantizedWeightsTrackF32) {
  const auto f32 = Logits(dir_.path());
  const std::string gguf = dir_ / "model-q8.gguf";
  WriteGguf(dir_.path(), gguf, DType::kQ8_0);
  // Four runs: GGUF Q8_0 tensors, and --quantize q8_0 / q4_0 of the safetensors model.
  const Agreement gguf_q8 = Compare(Logits(gguf), f32);
  const Agreement q8 = Compare(Logits(dir_.path(), DType::kQ8_0), f32);
  const Agreement q4 = Compare(Logits(dir_.path(), DType::kQ4_0), f32);
  for (auto [name, a] : {std::pair{"gguf q8_0", gguf_q8}, {"q8_0", q8}, {"q4_0", q4}}) {
    std::printf("%-10s max |diff| / max |logit| = %.4f, top-1 agreement %d/%d\n", name,
                a.max_rel_error, a.top1_same, a.positions);
  }
  ASSERT_EQ(q8.positions, 1000);
  // Documented tolerances (docs/BENCHMARKS.md): Q8_0 within 3% of the largest logit, Q4_0 within
  // 25%; Q8_0 also picks the same top-1 token at >= 90% of positions, Q4_0 at >= 50%.
  EXPECT_LT(gguf_q8.max_rel_error, 0.03);
  EXPECT_LT(q8.max_rel_error, 0.03);
  EXPECT_LT(q4.max_rel_error, 0.25);
  EXPECT_GT(q4.max_rel_error, q8.max_rel_error);
  EXPECT_GE(q8.top1_same, 900);
  EXPECT_GE(q4.top1_same, 500);
}

// Block-quantized files as llama.cpp writes them: a 256-wide model exported as F32, quantized by
// llama.cpp's own `llama-quantize` (the path in SHARDSERVE_LLAMA_QUANTIZE; the header of
// bench/vs_llamacpp.sh says how to build it), then loaded here. Their logits track the F32
// model's within each format's error, which a misread bit layout would not. Opt-in: CI has no
// llama.cpp, and quant_test holds every kernel to the scalar decoder in CI.
TEST(GgufLlamaCppTest, FilesFromLlamaQuantizeTrackF32) {
  const char* quantize = std::getenv("SHARDSERVE_LLAMA_QUANTIZE");
  if (quantize == nullptr) GTEST_SKIP() << "set SHARDSERVE_LLAMA_QUANTIZE to llama-quantize's path";
  TempDir dir;
  auto base = SynthConfigByName("tiny-llama-8l");
  ASSERT_TRUE(base.ok());
  ModelConfig c = *base;
  c.hidden_size = 256;
  c.intermediate_size = 768;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.tie_word_embeddings = false;
  ASSERT_TRUE(WriteSynthModel(c, dir.path(), {.seed = 5, .threads = 1}).ok());
  const std::string f32 = dir / "f32.gguf";
  WriteGguf(dir.path(), f32, DType::kF32);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 300; ++i) tokens.push_back((i * 7919 + 13) % 512);
  auto logits = [&](const std::string& path) {
    auto backend = NewCpuBackend({.threads = 2});
    auto stage = LoadStage(path, {}, {}, backend.get());
    EXPECT_TRUE(stage.ok()) << stage.status();
    return stage.ok() ? AllLogits(**stage, tokens) : std::vector<std::vector<float>>{};
  };
  const auto ref = logits(f32);
  struct Case {
    const char* type;
    uint32_t ggml_type;  // of blk.0.ffn_up.weight
    double max_rel_error;
    bool ordered;  // in the chain of errors that must grow
  };
  // Each format's error bound. The chain Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0 runs from most bits to
  // fewest and its errors must grow in that order (a misread fifth bit would put Q5_K below
  // Q4_K); Q5_0 and Q5_1 must land between Q6_K and Q4_K_M, and IQ4_NL above Q6_K.
  double previous = 0, q6 = 0, q5 = 0;
  for (const Case& q :
       {Case{"Q8_0", 8, 0.03, true}, Case{"Q6_K", 14, 0.07, true}, Case{"Q5_K_M", 13, 0.12, true},
        Case{"Q5_0", 6, 0.12, false}, Case{"Q5_1", 7, 0.12, false}, Case{"Q4_K_M", 12, 0.2, true},
        Case{"Q4_0", 2, 0.3, true}, Case{"IQ4_NL", 20, 0.3, false}}) {
    const std::string out = dir / absl::StrCat(q.type, ".gguf");
    const std::string cmd =
        absl::StrCat("'", quantize, "' '", f32, "' '", out, "' ", q.type, " > /dev/null 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    auto file = GgufFile::Open(out);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_EQ((*file)->tensor("blk.0.ffn_up.weight")->ggml_type, q.ggml_type) << q.type;
    const Agreement a = Compare(logits(out), ref);
    std::printf("%-7s max |diff| / max |logit| = %.4f, top-1 agreement %d/%d\n", q.type,
                a.max_rel_error, a.top1_same, a.positions);
    ASSERT_EQ(a.positions, 300);
    EXPECT_LT(a.max_rel_error, q.max_rel_error) << q.type;
    if (q.ordered) {
      EXPECT_GT(a.max_rel_error, previous)
          << q.type << " is closer to F32 than a format with more bits";
      previous = a.max_rel_error;
    } else {
      EXPECT_GT(a.max_rel_error, q6) << q.type << " is closer to F32 than Q6_K";
      q5 = std::max(q5, a.max_rel_error);
    }
    if (std::string(q.type) == "Q6_K") q6 = a.max_rel_error;
    if (std::string(q.type) == "Q4_K_M") {
      EXPECT_LT(q5, a.max_rel_error) << "Q5_0/Q5_1 against Q4_K_M";
    }
  }
}

TEST_F(GgufModelTest, ExportedMetadataAndVocabularyMatchTheFolder) {
  const std::string gguf = dir_ / "model-f16.gguf";
  WriteGguf(dir_.path(), gguf, DType::kF16);
  auto file = GgufFile::Open(gguf);
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = ConfigFromGguf(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, config_.hidden_size);
  EXPECT_EQ(config->num_layers, config_.num_layers);
  EXPECT_EQ(config->num_kv_heads, config_.num_kv_heads);
  EXPECT_EQ(config->vocab_size, config_.vocab_size);
  EXPECT_EQ(config->bos_token_id, config_.bos_token_id);
  EXPECT_EQ(config->eos_token_ids, config_.eos_token_ids);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(*(*file)->GetInt("general.file_type"), 1);  // MOSTLY_F16
  EXPECT_EQ((*file)->tensor("blk.0.ffn_up.weight")->ggml_type, 1u);
  EXPECT_EQ((*file)->tensor("blk.0.attn_norm.weight")->ggml_type, 0u);  // norms stay F32

  auto hf = Tokenizer::Load(dir_.path());
  auto gg = Tokenizer::Load(gguf);
  ASSERT_TRUE(hf.ok()) << hf.status();
  ASSERT_TRUE(gg.ok()) << gg.status();
  for (const char* text : {"Once upon a time, there was a little girl.", "  two  spaces",
                           "bytes: caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80",
                           "tabs\tand\nnewlines\n", ""}) {
    const std::vector<int32_t> a = (*hf)->Encode(text), b = (*gg)->Encode(text);
    EXPECT_EQ(a, b) << text;
    EXPECT_EQ((*gg)->Decode(b), text);
  }
}

// A tensor type this build does not read (Q4_1 here) is refused at load, naming the tensor,
// the type and what the build does read.
TEST_F(GgufModelTest, UnsupportedTensorTypesAreRefusedByName) {
  const std::string gguf = dir_ / "model.gguf";
  WriteGguf(dir_.path(), gguf, DType::kF32);
  auto bytes = ReadFileToString(gguf);
  ASSERT_TRUE(bytes.ok());
  std::string image = *bytes;
  // The tensor directory entry: name, u32 dims (2), u64 x 2 extents, u32 type, u64 offset.
  const std::string name = "blk.0.ffn_up.weight";
  const size_t at = image.find(name);
  ASSERT_NE(at, std::string::npos);
  const size_t type_at = at + name.size() + 4 + 16;
  uint32_t type;
  std::memcpy(&type, image.data() + type_at, 4);
  ASSERT_EQ(type, 0u);      // F32 as written
  const uint32_t q4_1 = 3;  // a smaller block type, so the data still fits
  std::memcpy(image.data() + type_at, &q4_1, 4);
  std::ofstream(gguf, std::ios::binary | std::ios::trunc) << image;
  auto backend = NewCpuBackend({.threads = 1});
  auto stage = LoadStage(gguf, {}, {}, backend.get());
  ASSERT_FALSE(stage.ok());
  EXPECT_EQ(stage.status().code(), absl::StatusCode::kUnimplemented) << stage.status();
  const std::string message(stage.status().message());
  EXPECT_NE(message.find("blk.0.ffn_up.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("q4_1"), std::string::npos) << message;
  EXPECT_NE(message.find("Q5_K"), std::string::npos) << message;  // what this build reads
}

TEST_F(GgufModelTest, ExportRefusesWhatItCannotWrite) {
  absl::Status s =
      ExportGguf(dir_.path(), dir_ / "x.gguf", {.dtype = DType::kQ4_K, .progress = nullptr});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("q8_0"), std::string::npos) << s;
  s = ExportGguf(dir_ / "missing", dir_ / "x.gguf", {});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing"), std::string::npos) << s;
  // A byte-level tokenizer (Llama-3, Qwen) is refused by name, and no partial file is left.
  auto tj = ReadFileToString(dir_ / "tokenizer.json");
  ASSERT_TRUE(tj.ok());
  std::string text = *tj;
  const size_t at = text.find("\"byte_fallback\": true");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 21, "\"byte_fallback\": false");
  std::ofstream(dir_ / "tokenizer.json", std::ios::trunc) << text;
  s = ExportGguf(dir_.path(), dir_ / "x.gguf", {});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("byte_fallback"), std::string::npos) << s;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x.gguf"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x.gguf.tmp"));
}

}  // namespace
}  // namespace shardserve
