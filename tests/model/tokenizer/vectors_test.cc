// llama.cpp's tokenizer vectors: Llama-3 and Qwen2 tokenizer.json files, the llama-spm GGUF
// vocabulary, and gpt2-type GGUF vocabularies built from the tokenizer.json files.
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/model/tokenizer/gguf_writer.h"
#include "tests/model/tokenizer/test_util.h"

namespace shardserve {
namespace {

using ::shardserve::testing::kVectors;
using ::shardserve::testing::NpmTokenizerDir;
using ::shardserve::testing::ReadAll;
using ::shardserve::testing::ReadVectors;
using ::testing::ElementsAreArray;

// Checks every vector (ids without BOS), full decode and streaming decode; returns matches.
int CheckVectors(const Tokenizer& tok, const std::string& stem, bool expect_roundtrip) {
  const auto cases = ReadVectors(stem);
  EXPECT_EQ(cases.size(), 46u) << stem;
  int matched = 0;
  for (const auto& c : cases) {
    const std::vector<int32_t> got = tok.Encode(c.text, /*add_bos=*/false);
    EXPECT_THAT(got, ElementsAreArray(c.ids)) << "text: \"" << c.text << "\"";
    matched += got == c.ids;
    const std::string full = tok.Decode(got);
    if (expect_roundtrip) {
      EXPECT_EQ(full, c.text);
    }
    for (bool skip : {true, false}) {
      StreamingDecoder stream(tok, skip);
      std::string streamed;
      for (int32_t id : got) streamed += stream.Add(id);
      streamed += stream.Flush();
      EXPECT_EQ(streamed, tok.Decode(got, skip)) << "text: \"" << c.text << "\"";
    }
  }
  return matched;
}

std::unique_ptr<Tokenizer> Load(const std::string& path) {
  if (path.empty()) return nullptr;
  auto tok = Tokenizer::Load(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(VectorsTest, Llama3TokenizerJson) {
  auto tok = Load(NpmTokenizerDir("llama3"));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(CheckVectors(*tok, kVectors + "ggml-vocab-llama-bpe.gguf", true), 46);
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_id(), 128000);
  EXPECT_EQ(tok->Encode("Hello world"), (std::vector<int32_t>{128000, 9906, 1917}));
  EXPECT_THAT(tok->eos_ids(), ::testing::IsSupersetOf({128001, 128009}));
  // Special tokens in the text are matched whole.
  EXPECT_EQ(tok->Encode("<|eot_id|>hi", false), (std::vector<int32_t>{128009, 6151}));
  EXPECT_EQ(tok->IdToPiece(1917), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(tok->Decode({128000, 9906, 1917}), "Hello world");
  EXPECT_EQ(tok->Decode({128000, 9906, 1917}, false), "<|begin_of_text|>Hello world");
}

TEST(VectorsTest, Qwen2TokenizerJson) {
  auto tok = Load(NpmTokenizerDir("qwen3"));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(CheckVectors(*tok, kVectors + "ggml-vocab-qwen2.gguf", true), 46);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->Encode("Hello world"), tok->Encode("Hello world", false));  // no BOS
  EXPECT_THAT(tok->eos_ids(), ::testing::IsSupersetOf({151643, 151645}));
}

TEST(VectorsTest, LlamaSpmGguf) {
  auto tok = Load(kVectors + "ggml-vocab-llama-spm.gguf");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  // SentencePiece drops nothing but may not round-trip leading spaces exactly; the ids are the
  // contract here.
  EXPECT_EQ(CheckVectors(*tok, kVectors + "ggml-vocab-llama-spm.gguf", false), 46);
  EXPECT_EQ(tok->Encode("Hello")[0], 1);
}

TEST(VectorsTest, DeepSeekV3TokenizerJsonLoads) {
  auto tok = Load(NpmTokenizerDir("deepseek_v3"));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 0);
  const std::vector<int32_t> ids = tok->Encode("Hello world 12345 你好");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(tok->Decode(ids), "Hello world 12345 你好");
}

// Converts a byte-level tokenizer.json into a vocab-only gpt2 GGUF with the given pre type.
std::string WriteGpt2Gguf(const std::string& dir, const std::string& pre, int32_t bos,
                          const std::string& out_name) {
  const auto j = nlohmann::json::parse(ReadAll(dir + "/tokenizer.json"));
  const auto& vocab = j.at("model").at("vocab");
  int32_t n = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    n = std::max(n, it.value().get<int32_t>() + 1);
  for (const auto& a : j.at("added_tokens")) n = std::max(n, a.at("id").get<int32_t>() + 1);
  std::vector<std::string> tokens(n);
  std::vector<int32_t> types(n, 1);
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    tokens[it.value().get<int32_t>()] = it.key();
  for (const auto& a : j.at("added_tokens")) {
    const int32_t id = a.at("id").get<int32_t>();
    tokens[id] = a.at("content").get<std::string>();
    types[id] = a.at("special").get<bool>() ? 3 : 4;
  }
  for (int32_t i = 0; i < n; ++i) {
    if (tokens[i].empty()) {
      tokens[i] = "[PAD" + std::to_string(i) + "]";
      types[i] = 5;
    }
  }
  std::vector<std::string> merges;
  for (const auto& m : j.at("model").at("merges")) {
    merges.push_back(m.is_string() ? m.get<std::string>()
                                   : m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  testing::GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddString("tokenizer.ggml.pre", pre);
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddInt32Array("tokenizer.ggml.token_type", types);
  w.AddStringArray("tokenizer.ggml.merges", merges);
  if (bos >= 0) w.AddUint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(bos));
  const std::string path = std::string(SHARDSERVE_BINARY_DIR) + "/testdata/" + out_name;
  EXPECT_TRUE(w.WriteTo(path));
  return path;
}

TEST(GgufGpt2Test, LlamaBpeFromLlama3Json) {
  const std::string dir = NpmTokenizerDir("llama3");
  ASSERT_FALSE(dir.empty());
  auto tok = Load(WriteGpt2Gguf(dir, "llama-bpe", 128000, "llama-bpe.vocab.gguf"));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(CheckVectors(*tok, kVectors + "ggml-vocab-llama-bpe.gguf", true), 46);
  EXPECT_EQ(tok->Encode("Hello world"), (std::vector<int32_t>{128000, 9906, 1917}));
  EXPECT_TRUE(tok->IsSpecial(128009));
}

TEST(GgufGpt2Test, Qwen2FromQwenJson) {
  const std::string dir = NpmTokenizerDir("qwen3");
  ASSERT_FALSE(dir.empty());
  auto tok = Load(WriteGpt2Gguf(dir, "qwen2", -1, "qwen2.vocab.gguf"));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(CheckVectors(*tok, kVectors + "ggml-vocab-qwen2.gguf", true), 46);
}

// deepseek-v3's GGUF rules equal its tokenizer.json's pre-tokenizer: same ids on every vector
// input. deepseek-llm / deepseek-coder / gpt-2 (other vocabularies in practice) are checked on a
// vocabulary they can all run on, against hand-derived splits.
TEST(GgufGpt2Test, DeepSeekV3MatchesItsTokenizerJson) {
  const std::string dir = NpmTokenizerDir("deepseek_v3");
  ASSERT_FALSE(dir.empty());
  auto json_tok = Load(dir);
  auto gguf_tok = Load(WriteGpt2Gguf(dir, "deepseek-v3", 0, "deepseek-v3.vocab.gguf"));
  ASSERT_NE(json_tok, nullptr);
  ASSERT_NE(gguf_tok, nullptr);
  for (const auto& c : ReadVectors(kVectors + "ggml-vocab-llama-bpe.gguf")) {
    EXPECT_EQ(gguf_tok->Encode(c.text), json_tok->Encode(c.text)) << c.text;
  }
}

TEST(GgufGpt2Test, OtherPreTypesSplitByTheirRules) {
  const std::string dir = NpmTokenizerDir("llama3");
  ASSERT_FALSE(dir.empty());
  auto piece_texts = [](const Tokenizer& tok, const std::vector<int32_t>& ids) {
    std::vector<std::string> out;
    for (int32_t id : ids) out.push_back(tok.Decode({id}));
    return out;
  };
  using V = std::vector<std::string>;
  {
    auto tok = Load(WriteGpt2Gguf(dir, "gpt-2", -1, "gpt2.vocab.gguf"));
    ASSERT_NE(tok, nullptr);
    // GPT-2 keeps digit runs whole and has no BOS by default.
    EXPECT_EQ(piece_texts(*tok, tok->Encode("a 12345")), (V{"a", " ", "123", "45"}));
  }
  {
    auto tok = Load(WriteGpt2Gguf(dir, "deepseek-coder", 128000, "dscoder.vocab.gguf"));
    ASSERT_NE(tok, nullptr);
    // Digits one by one; BOS added.
    const auto ids = tok->Encode("x 123");
    EXPECT_EQ(ids[0], 128000);
    EXPECT_EQ(piece_texts(*tok, {ids.begin() + 1, ids.end()}), (V{"x", " ", "1", "2", "3"}));
  }
  {
    auto tok = Load(WriteGpt2Gguf(dir, "deepseek-llm", 128000, "dsllm.vocab.gguf"));
    ASSERT_NE(tok, nullptr);
    const auto ids = tok->Encode("Hi!\n12345", false);
    EXPECT_EQ(piece_texts(*tok, ids), (V{"Hi", "!", "\n", "123", "45"}));
  }
  { EXPECT_FALSE(Tokenizer::Load(WriteGpt2Gguf(dir, "no-such-pre", -1, "bad.vocab.gguf")).ok()); }
}

}  // namespace
}  // namespace shardserve
