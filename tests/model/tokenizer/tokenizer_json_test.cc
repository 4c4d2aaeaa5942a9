// tokenizer.json loading: pipeline pieces on small hand-written files, and clear errors for
// malformed or unsupported content.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_state.h"
#include "tests/model/tokenizer/test_util.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;
using tokenizer_internal::ParseHfTokenizer;

std::unique_ptr<Tokenizer> Parse(const std::string& json) {
  auto tok = ParseHfTokenizer(json, "", "", "t.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(TokenizerJsonTest, SentencePieceStyleMergesByRank) {
  auto tok = Parse(testing::ReadAll("fuzz/corpus/tokenizer_json_fuzz/spm_small.json"));
  ASSERT_NE(tok, nullptr);
  // "▁ab": (▁,a) has the better rank, so "a b" never applies.
  EXPECT_EQ(tok->Encode("ab"), (std::vector<int32_t>{1, 262, 261}));
  // Unknown characters fall back to bytes: "é" = C3 A9.
  EXPECT_EQ(tok->Encode("é", false), (std::vector<int32_t>{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok->Decode(tok->Encode("a é")), "a é");
}

TEST(TokenizerJsonTest, NormalizersAndPreTokenizers) {
  auto tok = Parse(testing::ReadAll("fuzz/corpus/tokenizer_json_fuzz/metaspace_digits.json"));
  ASSERT_NE(tok, nullptr);
  // NFKC folds the fullwidth letter, Lowercase lowers it, Digits isolates "1", Metaspace
  // prepends "▁" to the first word only.
  EXPECT_EQ(tok->Encode("\xEF\xBC\xA1"
                        "1",
                        false),
            (std::vector<int32_t>{3, 2}));
  // The non-special added token strips the spaces around it.
  EXPECT_EQ(tok->Encode("a [X] a", false), (std::vector<int32_t>{3, 5, 1}));
  EXPECT_EQ(tok->Decode({3, 1}), "aa");  // Metaspace decoder drops the leading space
}

TEST(TokenizerJsonTest, MergesAsPairs) {
  auto tok = Parse(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                     "merges": [["a", "b"]]}})");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("abab"), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(tok->bos_id(), -1);
}

TEST(TokenizerJsonTest, ErrorsNameTheFileAndField) {
  struct Case {
    std::string json, want;
  };
  for (
      const Case& c : std::vector<Case>{
          {"{", "not valid JSON"},
          {"[]", "not a JSON object"},
          {R"({"model": {"type": "Unigram", "vocab": []}})", "unsupported model \"Unigram\""},
          {R"({"model": {"type": "BPE", "vocab": {"a": 2.5e57}}})", "model.vocab"},
          {R"({"model": {"type": "BPE", "vocab": {"a": -1}}})", "out of range"},
          {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "missing"},
          {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})", "no space"},
          {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "normalizer": {"type": "BertNormalizer"}})",
           "unsupported normalizer"},
          {R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"}})",
           "bad split regex"},
          {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": "x"}]})",
           "added_tokens"},
          {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "<unk>"}})", "unk_token"},
      }) {
    auto tok = ParseHfTokenizer(c.json, "", "", "t.json");
    ASSERT_FALSE(tok.ok()) << c.json;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr("t.json")) << c.json;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(c.want)) << c.json;
  }
}

TEST(TokenizerJsonTest, LoadPaths) {
  EXPECT_EQ(Tokenizer::Load("/nonexistent/model").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::Load("tests/model/tokenizer").status().code(),
            absl::StatusCode::kNotFound);  // a folder without tokenizer files
  EXPECT_TRUE(Tokenizer::Load("../shared/models/stories260K/tokenizer.json").ok());
  // A GGUF without a vocabulary.
  auto no_vocab = Tokenizer::Load("fuzz/corpus/gguf_fuzz/two_tensors.gguf");
  EXPECT_EQ(no_vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_vocab.status().message()), HasSubstr("tokenizer.ggml.model"));
  auto vocab_only = Tokenizer::Load("fuzz/corpus/gguf_fuzz/vocab_only.gguf");
  ASSERT_TRUE(vocab_only.ok()) << vocab_only.status();
  EXPECT_EQ((*vocab_only)->Encode("a a"), (std::vector<int32_t>{1, 261, 261}));
}

}  // namespace
}  // namespace shardserve
