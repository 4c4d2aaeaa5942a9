// Masks over real vocabularies: SentencePiece with byte fallback (stories260K) and byte-level
// BPE (Llama-3, 128k tokens, many spanning JSON punctuation and text at once).
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/grammar/grammar.h"
#include "model/grammar/json_schema.h"
#include "model/grammar/matcher.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace shardserve::grammar {
namespace {

bool Allowed(const std::string& mask, int32_t id) { return (mask[id >> 3] >> (id & 7)) & 1; }

std::unique_ptr<Tokenizer> Load(const std::string& path) {
  auto t = Tokenizer::Load(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

const char kSchema[] = R"({
  "type": "object",
  "properties": {
    "title": {"type": "string"},
    "year": {"type": "integer"},
    "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "sci-fi"]}, "maxItems": 3},
    "rating": {"type": "number"},
    "seen": {"type": "boolean"}
  },
  "required": ["title", "year", "genres"]
})";

// Random generations: every allowed token keeps the output valid, the mask holds only tokens
// Accept takes (checked on a sample of tokens per step, all of them where `exhaustive`), and
// outputs cut by the budget still parse. The masks come from a token table shared by the
// walks, and each equals the one a whole-vocabulary walk gives.
void RandomWalks(const Tokenizer& tok, bool exhaustive) {
  auto vocab = Vocabulary::FromTokenizer(tok);
  ASSERT_TRUE(vocab->has_all_bytes());
  auto gbnf = JsonSchemaToGbnf(kSchema);
  ASSERT_TRUE(gbnf.ok()) << gbnf.status();
  auto g = Grammar::Parse(*gbnf);
  ASSERT_TRUE(g.ok()) << g.status();
  auto table = std::make_shared<TokenTable>(*g, vocab);
  std::mt19937 rng(5);
  int64_t built_before = 0;
  for (int walk = 0; walk < 6; ++walk) {
    const int max_tokens = 34 + 12 * walk;  // the shortest output is 33 bytes
    Matcher m(table);
    Matcher walked(*g, vocab);
    std::vector<int32_t> history;
    std::vector<int32_t> ids;
    for (int used = 0; used < max_tokens && !m.Finished(); ++used) {
      auto mask = m.Mask(max_tokens - used - 1);
      ASSERT_TRUE(mask.ok()) << mask.status();
      auto reference = walked.Mask(max_tokens - used - 1);
      ASSERT_TRUE(reference.ok()) << reference.status();
      for (int32_t id = 0; id < vocab->size(); ++id) {
        ASSERT_EQ(Allowed(*mask, id), Allowed(*reference, id))
            << "token " << id << " ('" << vocab->bytes(id) << "') at walk " << walk << ", token "
            << used;
      }
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        if (Allowed(*mask, id)) allowed.push_back(id);
      }
      ASSERT_FALSE(allowed.empty());
      if (exhaustive || used % 8 == 0) {
        // Tokens outside the mask that Accept takes would mean a valid continuation was lost.
        const int probes = exhaustive ? vocab->size() : 2000;
        for (int p = 0; p < probes; ++p) {
          const int32_t id = exhaustive ? p : static_cast<int32_t>(rng() % vocab->size());
          Matcher probe(*g, vocab);
          for (int32_t h : history) ASSERT_TRUE(probe.Accept(h).ok());
          if (Allowed(*mask, id)) continue;  // allowed tokens are checked by taking them
          EXPECT_FALSE(probe.Accept(id).ok() && probe.MinBytesToEnd() <= max_tokens - used - 1)
              << "token " << id << " ('" << vocab->bytes(id) << "') missing from the mask";
        }
      }
      const int32_t id = allowed[rng() % allowed.size()];
      ASSERT_TRUE(m.Accept(id).ok()) << "allowed token " << id << " refused";
      ASSERT_TRUE(walked.Accept(id).ok());
      history.push_back(id);
      if (!vocab->is_eos(id)) ids.push_back(id);
    }
    ASSERT_TRUE(m.CanEnd());
    std::string text;
    for (int32_t id : ids) text += vocab->bytes(id);
    auto v = nlohmann::json::parse(text, nullptr, false);
    ASSERT_FALSE(v.is_discarded()) << text;
    EXPECT_TRUE(v.contains("title") && v.contains("year") && v.contains("genres")) << text;
    if (walk == 0) built_before = table->entries_built();
  }
  // Later walks meet mostly the stack tops the first met: the table answers them.
  EXPECT_GT(table->hits(), 2 * (table->entries_built() - built_before));
}

TEST(GrammarVocab, StoriesSentencePiece) {
  auto tok = Load(std::string(SHARDSERVE_SOURCE_DIR) + "/../shared/models/stories260K");
  ASSERT_NE(tok, nullptr);
  RandomWalks(*tok, /*exhaustive=*/true);
}

// Masks cover the model's vocabulary (its logits), which may be larger than the tokenizer's:
// the extra ids are never allowed.
TEST(GrammarVocab, MasksCoverTheModelsVocabulary) {
  auto tok = Load(std::string(SHARDSERVE_SOURCE_DIR) + "/../shared/models/stories260K");
  ASSERT_NE(tok, nullptr);
  auto vocab = Vocabulary::FromTokenizer(*tok, tok->vocab_size() + 13);
  EXPECT_EQ(vocab->size(), tok->vocab_size() + 13);
  auto g = Grammar::Parse(JsonObjectGbnf());
  ASSERT_TRUE(g.ok());
  Matcher m(*g, vocab);
  auto id_of = [&](const std::string& bytes) {
    for (int32_t id = 0; id < vocab->size(); ++id) {
      if (vocab->bytes(id) == bytes) return id;
    }
    return -1;
  };
  ASSERT_TRUE(m.Accept(id_of("{")).ok());
  ASSERT_TRUE(m.Accept(id_of("\"")).ok());
  auto mask = m.Mask(-1);
  ASSERT_TRUE(mask.ok());
  EXPECT_EQ(mask->size(), static_cast<size_t>((tok->vocab_size() + 13 + 7) / 8));
  for (int32_t id = tok->vocab_size(); id < vocab->size(); ++id) EXPECT_FALSE(Allowed(*mask, id));
}

TEST(GrammarVocab, Llama3ByteLevel) {
  auto tok = Load(std::string(SHARDSERVE_BINARY_DIR) + "/testdata/tokenizers/llama3");
  ASSERT_NE(tok, nullptr);
  EXPECT_GT(tok->vocab_size(), 128000);
  RandomWalks(*tok, /*exhaustive=*/false);
}

// DeepSeek-V3's tool-call markers are added tokens that are not special: a grammar that writes
// them may take each as its one token, which decodes to the marker's text.
TEST(GrammarVocab, DeepSeekV3MarkersAreSingleTokens) {
  auto tok = Load(std::string(SHARDSERVE_BINARY_DIR) + "/testdata/tokenizers/deepseek_v3");
  ASSERT_NE(tok, nullptr);
  const std::string marker = "<｜tool▁calls▁begin｜>";
  const std::vector<int32_t> ids = tok->Encode(marker, /*add_bos=*/false);
  ASSERT_EQ(ids.size(), 1u);
  auto vocab = Vocabulary::FromTokenizer(*tok);
  auto g = Grammar::Parse("root ::= \"<｜tool▁calls▁begin｜>\" [a-z]+");
  ASSERT_TRUE(g.ok()) << g.status();
  Matcher m(std::make_shared<TokenTable>(*g, vocab));
  auto mask = m.Mask(-1);
  ASSERT_TRUE(mask.ok()) << mask.status();
  EXPECT_TRUE(Allowed(*mask, ids[0]));
  ASSERT_TRUE(m.Accept(ids[0]).ok());
  EXPECT_FALSE(m.CanEnd());
  EXPECT_EQ(tok->Decode({ids[0]}), marker);
}

}  // namespace
}  // namespace shardserve::grammar
