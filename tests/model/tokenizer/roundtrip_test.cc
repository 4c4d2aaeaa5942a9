// decode(encode(x)) == x on random Unicode, and the documented handling of invalid UTF-8.
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/pre_tokenizer.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/utf8.h"
#include "tests/model/tokenizer/test_util.h"

namespace shardserve {
namespace {

// Random strings mixing ASCII, whitespace, Latin-1, CJK, emoji and other planes (no surrogates,
// no noncharacters are excluded on purpose: they are valid scalar values).
std::string RandomUnicode(std::mt19937& rng) {
  std::uniform_int_distribution<int> len_dist(0, 40);
  std::uniform_int_distribution<int> kind_dist(0, 5);
  std::string s;
  const int len = len_dist(rng);
  for (int i = 0; i < len; ++i) {
    char32_t cp;
    switch (kind_dist(rng)) {
      case 0:
        cp = std::uniform_int_distribution<int>(0x20, 0x7E)(rng);
        break;
      case 1:
        cp = std::string_view(" \n\t\r  ")[rng() % 6];
        break;
      case 2:
        cp = std::uniform_int_distribution<int>(0xA0, 0x24F)(rng);
        break;
      case 3:
        cp = std::uniform_int_distribution<int>(0x4E00, 0x9FFF)(rng);
        break;
      case 4:
        cp = std::uniform_int_distribution<int>(0x1F300, 0x1FAFF)(rng);
        break;
      default: {
        do {
          cp = std::uniform_int_distribution<uint32_t>(1, 0x10FFFF)(rng);
        } while (cp >= 0xD800 && cp <= 0xDFFF);
      }
    }
    utf8::Append(cp, &s);
  }
  return s;
}

class RoundTripTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundTripTest, DecodeEncodeIsIdentityOnRandomUnicode) {
  std::string path = GetParam();
  if (path.rfind("npm:", 0) == 0) path = testing::NpmTokenizerDir(path.substr(4));
  ASSERT_FALSE(path.empty());
  auto tok = Tokenizer::Load(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const bool nfc = GetParam() == "npm:qwen3";
  const tokenizer_internal::Normalizer normalizer(
      {{tokenizer_internal::NormalizerKind::kNfc, "", ""}});
  std::mt19937 rng(1234);
  int ok = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::string s = RandomUnicode(rng);
    const std::vector<int32_t> ids = (*tok)->Encode(s, /*add_bos=*/true);
    const std::string back = (*tok)->Decode(ids);
    // Qwen normalizes to NFC first, so its round trip gives the NFC form.
    const std::string want = nfc ? normalizer.Apply(s) : s;
    EXPECT_EQ(back, want) << "case " << i;
    ok += back == want;
    StreamingDecoder stream(**tok);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Add(id);
    streamed += stream.Flush();
    EXPECT_EQ(streamed, back);
  }
  EXPECT_EQ(ok, 1000);
}

// Byte-fallback (stories260K) and byte-level (Llama-3) vocabularies are lossless.
INSTANTIATE_TEST_SUITE_P(Vocabularies, RoundTripTest,
                         ::testing::Values("../shared/models/stories260K", "npm:llama3",
                                           "npm:qwen3"));

TEST(InvalidUtf8Test, ReplacedByReplacementCharacter) {
  auto tok = Tokenizer::Load("../shared/models/stories260K");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // A stray continuation byte, a truncated 3-byte sequence and an overlong encoding: each maximal
  // invalid part is one U+FFFD.
  const std::string bad = std::string("a\x80") + "b\xE2\x82" + "c\xC0\xAF";
  EXPECT_EQ(utf8::Sanitize(bad),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD"
            "c\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ((*tok)->Encode(bad), (*tok)->Encode(utf8::Sanitize(bad)));
  EXPECT_EQ((*tok)->Decode((*tok)->Encode(bad)), utf8::Sanitize(bad));
  EXPECT_EQ(utf8::Sanitize("ok \xF0\x9F\x98\x80"), "ok \xF0\x9F\x98\x80");
  EXPECT_EQ(utf8::Sanitize("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
}

TEST(InvalidUtf8Test, DecodeOfPartialCharacterIsReplaced) {
  const std::string dir = testing::NpmTokenizerDir("llama3");
  ASSERT_FALSE(dir.empty());
  auto tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<int32_t> ids =
      (*tok)->Encode("\xF0\x9F\xA6\x99", false);  // 🦙: several tokens
  ASSERT_GT(ids.size(), 1u);
  EXPECT_EQ((*tok)->Decode({ids[0]}), "\xEF\xBF\xBD");
  StreamingDecoder stream(**tok);
  EXPECT_EQ(stream.Add(ids[0]), "");
  std::string rest;
  for (size_t i = 1; i < ids.size(); ++i) rest += stream.Add(ids[i]);
  EXPECT_EQ(rest, "\xF0\x9F\xA6\x99");
  EXPECT_EQ(stream.Flush(), "");
}

}  // namespace
}  // namespace shardserve
