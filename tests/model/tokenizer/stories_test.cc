// stories260K (SentencePiece-style BPE with byte fallback, from tokenizer.json and from GGUF)
// against the llama2.c goldens.
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/model/tokenizer/test_util.h"

namespace shardserve {
namespace {

using ::shardserve::testing::ReadAll;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

const char kModelDir[] = "../shared/models/stories260K";
const char kGoldenDir[] = "../shared/golden/stories260K";

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& path) {
  auto tok = Tokenizer::Load(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(StoriesTokenizerTest, Metadata) {
  auto tok = LoadOrDie(kModelDir);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_THAT(tok->eos_ids(), ElementsAre(2));
  EXPECT_TRUE(tok->IsSpecial(1));
  EXPECT_FALSE(tok->IsSpecial(300));
  EXPECT_EQ(tok->IdToPiece(3), "<0x00>");
  EXPECT_EQ(tok->IdToPiece(403), "\xE2\x96\x81Once");
}

TEST(StoriesTokenizerTest, PromptIdsMatchGoldens) {
  auto tok = LoadOrDie(kModelDir);
  ASSERT_NE(tok, nullptr);
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kGoldenDir)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".json" || name == "tokenizer_cases.json") continue;
    const auto golden = nlohmann::json::parse(ReadAll(entry.path().string()));
    const auto want = golden.at("prompt_ids").get<std::vector<int32_t>>();
    EXPECT_THAT(tok->Encode(golden.at("prompt").get<std::string>()), ElementsAreArray(want))
        << name;
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

class StoriesCasesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StoriesCasesTest, AllCasesMatch) {
  auto tok = LoadOrDie(GetParam());
  ASSERT_NE(tok, nullptr);
  const auto cases =
      nlohmann::json::parse(ReadAll(std::string(kGoldenDir) + "/tokenizer_cases.json"));
  ASSERT_EQ(cases.at("n_cases").get<int>(), 473);
  int matched = 0;
  for (const auto& c : cases.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tok->Encode(text);
    EXPECT_THAT(got, ElementsAreArray(want)) << "text: " << text;
    matched += got == want;
    // Decoding gives the text back, except where the text spells special tokens (skipped).
    if (c.at("group") != "special_literal") {
      EXPECT_EQ(tok->Decode(got), text);
    }
    StreamingDecoder stream(*tok);
    std::string streamed;
    for (int32_t id : got) streamed += stream.Add(id);
    streamed += stream.Flush();
    EXPECT_EQ(streamed, tok->Decode(got));
  }
  EXPECT_EQ(matched, 473);
}

INSTANTIATE_TEST_SUITE_P(JsonAndGguf, StoriesCasesTest,
                         ::testing::Values(std::string(kModelDir),
                                           std::string(kModelDir) + "/stories260K.gguf"));

TEST(StoriesTokenizerTest, DecodeRules) {
  auto tok = LoadOrDie(kModelDir);
  ASSERT_NE(tok, nullptr);
  // The leading space of the first piece is dropped, as the tokenizer.json Strip decoder says.
  EXPECT_EQ(tok->Decode({1, 403, 407, 261, 378}), "Once upon a time");
  EXPECT_EQ(tok->Decode({1, 403}, /*skip_special=*/false), "<s> Once");
  // Byte-fallback pieces join into one character; a lone lead byte becomes U+FFFD.
  const std::vector<int32_t> e_acute = tok->Encode("é", false);
  EXPECT_EQ(tok->Decode(e_acute), "é");
  EXPECT_EQ(tok->Decode({3 + 0xC3}), "\xEF\xBF\xBD");
  StreamingDecoder stream(*tok);
  EXPECT_EQ(stream.Add(3 + 0xC3), "");  // held back: an unfinished character
  EXPECT_EQ(stream.Add(3 + 0xA9), "\xC3\xA9");
  EXPECT_EQ(stream.Add(3 + 0xC3), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace shardserve
