#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/grammar/grammar.h"
#include "model/grammar/json_schema.h"
#include "model/grammar/matcher.h"
#include "nlohmann/json.hpp"

namespace shardserve::grammar {
namespace {

using ::testing::HasSubstr;

// A vocabulary with every single byte (ids 0..255), some longer tokens, and EOS = 256.
std::shared_ptr<const Vocabulary> TestVocab() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  bytes.push_back("");  // 256: EOS
  for (const char* t :
       {"{\"", "\":",  "\",\"", "true", "false", "null",     "\"}",          "12",
        "ab",  "abc",  "},{",   "[{",   "}]",    "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        " \"", "\"a",  "a\"",   ", ",   ": ",    "\\n",      "\\u00",        "-0.",
        "e+",  "\xc3", "\xa9"}) {
    bytes.push_back(t);
  }
  return std::make_shared<const Vocabulary>(std::move(bytes), std::vector<int32_t>{256});
}

bool Allowed(const std::string& mask, int32_t id) { return (mask[id >> 3] >> (id & 7)) & 1; }

std::shared_ptr<const Grammar> MustParse(const std::string& text) {
  auto g = Grammar::Parse(text);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *g : nullptr;
}

// Whether `text` is a whole sentence of the grammar, fed one byte token at a time.
bool Matches(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  Matcher m(g, TestVocab());
  for (unsigned char c : text) {
    if (!m.Accept(c).ok()) return false;
  }
  return m.CanEnd();
}

TEST(GrammarParse, LiteralsClassesGroupsAndRepetition) {
  auto g = MustParse(R"(
    # a comment
    root ::= greeting " " name ("!" | "?")+ digits?
    greeting ::= "hi" | "hello"
    name ::= [A-Z] [a-z]{1,3}
    digits ::= [0-9]{2,}
  )");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Matches(g, "hi Bob!"));
  EXPECT_TRUE(Matches(g, "hello Anna?!?42"));
  EXPECT_FALSE(Matches(g, "hello Annab!"));  // {1,3}
  EXPECT_FALSE(Matches(g, "hi Bob"));        // + needs one
  EXPECT_FALSE(Matches(g, "hi Bob!4"));      // {2,}
  EXPECT_FALSE(Matches(g, "hi bob!"));
  EXPECT_EQ(g->min_length(), 2 + 1 + 2 + 1);
}

TEST(GrammarParse, ClassesOverCodePointsMatchUtf8) {
  auto g = MustParse(R"(root ::= [^"\\]* "\"")");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Matches(g, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""));
  EXPECT_FALSE(Matches(g, "a\\\""));
  EXPECT_FALSE(Matches(g, "\x80\""));          // a lone continuation byte
  EXPECT_FALSE(Matches(g, "\xed\xa0\x80\""));  // an encoded surrogate
  EXPECT_FALSE(Matches(g, "\xc0\xaf\""));      // an overlong encoding
  auto greek = MustParse("root ::= [α-ω]+");
  ASSERT_NE(greek, nullptr);
  EXPECT_TRUE(Matches(greek, "\xce\xb1\xce\xb2\xcf\x89"));  // αβω
  EXPECT_FALSE(Matches(greek, "a"));
  auto any = MustParse(R"(root ::= . "\u00e9" "\x41")");
  ASSERT_NE(any, nullptr);
  EXPECT_TRUE(Matches(any,
                      "\xe2\x82\xac\xc3\xa9"
                      "A"));
}

TEST(GrammarParse, ErrorsNameTheProblemAndItsPlace) {
  auto undefined = Grammar::Parse("root ::= item\n");
  ASSERT_FALSE(undefined.ok());
  EXPECT_THAT(undefined.status().message(), HasSubstr("undefined rule 'item'"));

  auto no_root = Grammar::Parse("start ::= \"a\"\n");
  ASSERT_FALSE(no_root.ok());
  EXPECT_THAT(no_root.status().message(), HasSubstr("no 'root' rule"));

  auto left = Grammar::Parse("root ::= list\nlist ::= list \",\" \"a\" | \"a\"\n");
  ASSERT_FALSE(left.ok());
  EXPECT_THAT(left.status().message(), HasSubstr("'list' is left-recursive"));

  auto endless = Grammar::Parse("root ::= \"a\" root\n");
  ASSERT_FALSE(endless.ok());
  EXPECT_THAT(endless.status().message(), HasSubstr("can never finish"));

  auto escape = Grammar::Parse("root ::= \"a\"\n  other ::= \"\\q\"\n");
  ASSERT_FALSE(escape.ok());
  EXPECT_THAT(escape.status().message(), HasSubstr("line 2, column"));
  EXPECT_THAT(escape.status().message(), HasSubstr("unknown escape"));

  auto unterminated = Grammar::Parse("root ::= [a-z\n");
  ASSERT_FALSE(unterminated.ok());

  std::string many = "root ::= r0\n";
  for (int i = 0; i < 120; ++i) {
    many += "r" + std::to_string(i) + " ::= \"a\"{9000} r" + std::to_string(i + 1) + "?\n";
  }
  many += "r120 ::= \"b\"\n";
  auto huge = Grammar::Parse(many);
  ASSERT_FALSE(huge.ok());
  EXPECT_THAT(huge.status().message(), HasSubstr("more than"));

  // Nesting is bounded: the parser and the matcher recurse over it.
  auto deep_groups =
      Grammar::Parse("root ::= " + std::string(300, '(') + "\"a\"" + std::string(300, ')'));
  ASSERT_FALSE(deep_groups.ok());
  EXPECT_THAT(deep_groups.status().message(), HasSubstr("nest more than 256"));
  std::string chain = "root ::= r0\n";
  for (int i = 0; i < 300; ++i) {
    chain += "r" + std::to_string(i) + " ::= r" + std::to_string(i + 1) + " \"x\"\n";
  }
  chain += "r300 ::= \"y\"\n";
  auto deep_rules = Grammar::Parse(chain);
  ASSERT_FALSE(deep_rules.ok());
  EXPECT_THAT(deep_rules.status().message(), HasSubstr("nests more than 256 rules deep"));

  auto twice = Grammar::Parse("root ::= \"a\"\nroot ::= \"b\"\n");
  ASSERT_FALSE(twice.ok());
  EXPECT_THAT(twice.status().message(), HasSubstr("defined twice"));
}

// For random states of a grammar, a token is in the mask exactly when Accept takes it, with
// masks from a token table shared by all the walks and from whole-vocabulary walks alike.
void CheckMaskAgreesWithAccept(const std::string& gbnf, int walks, int steps) {
  auto g = MustParse(gbnf);
  ASSERT_NE(g, nullptr);
  auto vocab = TestVocab();
  auto table = std::make_shared<TokenTable>(g, vocab);
  std::mt19937 rng(7);
  for (int w = 0; w < walks; ++w) {
    const bool use_table = w % 2 == 0;
    SCOPED_TRACE(use_table ? "token table" : "trie walk");
    Matcher m = use_table ? Matcher(table) : Matcher(g, vocab);
    std::vector<int32_t> history;
    for (int s = 0; s < steps && !m.Finished(); ++s) {
      auto mask = m.Mask(-1);
      ASSERT_TRUE(mask.ok()) << mask.status();
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        Matcher probe(g, vocab);
        for (int32_t h : history) ASSERT_TRUE(probe.Accept(h).ok());
        const bool ok = probe.Accept(id).ok();
        ASSERT_EQ(Allowed(*mask, id), ok) << "token " << id << " at walk " << w << " step " << s;
        if (ok) allowed.push_back(id);
      }
      ASSERT_FALSE(allowed.empty());
      history.push_back(allowed[rng() % allowed.size()]);
      ASSERT_TRUE(m.Accept(history.back()).ok());
    }
  }
}

TEST(Matcher, MaskIsExactlyTheAcceptedTokensForJson) {
  CheckMaskAgreesWithAccept(JsonObjectGbnf(), 20, 40);
}

TEST(Matcher, MaskIsExactlyTheAcceptedTokensForAmbiguousGrammar) {
  // Alternatives sharing prefixes keep several stacks alive at once.
  CheckMaskAgreesWithAccept(R"(
    root ::= ( "ab" "c"* | "a" [b-d]+ "x" | word ) "!"
    word ::= [a-z]+
  )",
                            20, 12);
}

TEST(Matcher, EosOnlyWhenComplete) {
  auto g = MustParse(R"(root ::= "12" | "123")");
  ASSERT_NE(g, nullptr);
  Matcher m(g, TestVocab());
  auto mask = m.Mask(-1);
  ASSERT_TRUE(mask.ok());
  EXPECT_FALSE(Allowed(*mask, 256));
  EXPECT_FALSE(m.Accept(256).ok());
  ASSERT_TRUE(m.Accept('1').ok());
  ASSERT_TRUE(m.Accept('2').ok());
  EXPECT_TRUE(m.CanEnd());
  EXPECT_FALSE(m.Finished());  // "3" may follow
  mask = m.Mask(-1);
  ASSERT_TRUE(mask.ok());
  EXPECT_TRUE(Allowed(*mask, 256));
  EXPECT_TRUE(Allowed(*mask, '3'));
  EXPECT_FALSE(Allowed(*mask, '4'));
  ASSERT_TRUE(m.Accept('3').ok());
  EXPECT_TRUE(m.Finished());
  // A rejected token leaves the state as it was.
  Matcher n(g, TestVocab());
  EXPECT_FALSE(n.Accept('2').ok());
  EXPECT_TRUE(n.Accept('1').ok());
}

// Random generations with a token budget: whatever is chosen among the allowed tokens, the
// output is complete when the budget runs out.
TEST(Matcher, BudgetAlwaysLeavesRoomToFinish) {
  auto g = MustParse(JsonObjectGbnf());
  ASSERT_NE(g, nullptr);
  auto vocab = TestVocab();
  std::mt19937 rng(11);
  for (int max_tokens : {2, 3, 5, 8, 16, 40}) {
    for (int trial = 0; trial < 30; ++trial) {
      Matcher m(g, vocab);
      std::string out;
      int used = 0;
      while (used < max_tokens && !m.Finished()) {
        auto mask = m.Mask(max_tokens - used - 1);
        ASSERT_TRUE(mask.ok());
        std::vector<int32_t> allowed;
        for (int32_t id = 0; id < vocab->size(); ++id) {
          if (Allowed(*mask, id)) allowed.push_back(id);
        }
        ASSERT_FALSE(allowed.empty()) << "max_tokens " << max_tokens << " after '" << out << "'";
        const int32_t id = allowed[rng() % allowed.size()];
        ASSERT_TRUE(m.Accept(id).ok());
        ++used;
        if (id == 256) break;
        out += vocab->bytes(id);
      }
      EXPECT_TRUE(m.CanEnd()) << "max_tokens " << max_tokens << ": '" << out << "'";
      const auto parsed = nlohmann::json::parse(out, nullptr, false);
      EXPECT_FALSE(parsed.is_discarded()) << out;
      EXPECT_TRUE(parsed.is_object()) << out;
    }
  }
}

// A grammar ambiguous enough to keep thousands of parse stacks alive fails cleanly instead of
// slowing every later token.
TEST(Matcher, TooAmbiguousGrammarsAreResourceExhausted) {
  auto g = MustParse(R"(root ::= ( "a" | "a" "a" | "a" "a" "a" | "a" "a" "a" "a" )*)");
  ASSERT_NE(g, nullptr);
  Matcher m(g, TestVocab());
  absl::Status last;
  for (int i = 0; i < 4000 && last.ok(); ++i) last = m.Accept('a');
  // Dedup keeps this one small: each position is one stack, whatever the path.
  EXPECT_TRUE(last.ok()) << last;
  // After k "a"s, 2^k stacks: each remembers its own string of pending "b"s and "c"s.
  auto wide = MustParse(R"(root ::= "a" root "b" | "a" root "c" | "x")");
  ASSERT_NE(wide, nullptr);
  Matcher w(wide, TestVocab());
  absl::Status status;
  for (int i = 0; i < 200 && status.ok(); ++i) status = w.Accept('a');
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_EQ(w.Mask(-1).status().code(), absl::StatusCode::kResourceExhausted);
  // The same through a token table: its walk hits the bounds too, and says so.
  Matcher t(std::make_shared<TokenTable>(wide, TestVocab()));
  status = absl::OkStatus();
  for (int i = 0; i < 200 && status.ok(); ++i) status = t.Accept('a');
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_EQ(t.Mask(-1).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(Matcher, CacheAnswersRepeatedStates) {
  auto g = MustParse(JsonObjectGbnf());
  ASSERT_NE(g, nullptr);
  Matcher m(g, TestVocab());
  for (char c : std::string("{\"key\":\""))
    ASSERT_TRUE(m.Accept(static_cast<unsigned char>(c)).ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(m.Mask(-1).ok());
    ASSERT_TRUE(m.Accept('x').ok());
  }
  EXPECT_GE(m.cache_hits(), 9);
  EXPECT_LE(m.cache_misses(), 1);
}

// Random walks over a schema's grammar: outputs parse and have the schema's shape.
std::vector<nlohmann::json> Generate(const std::string& schema, int count, int max_tokens) {
  auto gbnf = JsonSchemaToGbnf(schema);
  EXPECT_TRUE(gbnf.ok()) << gbnf.status();
  if (!gbnf.ok()) return {};
  auto g = MustParse(*gbnf);
  if (g == nullptr) return {};
  auto vocab = TestVocab();
  std::mt19937 rng(3);
  std::vector<nlohmann::json> out;
  for (int i = 0; i < count; ++i) {
    Matcher m(g, vocab);
    std::string text;
    for (int used = 0; used < max_tokens && !m.Finished(); ++used) {
      auto mask = m.Mask(max_tokens - used - 1);
      EXPECT_TRUE(mask.ok());
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        if (Allowed(*mask, id)) allowed.push_back(id);
      }
      if (allowed.empty()) break;
      const int32_t id = allowed[rng() % allowed.size()];
      EXPECT_TRUE(m.Accept(id).ok());
      if (id == 256) break;
      text += vocab->bytes(id);
    }
    auto parsed = nlohmann::json::parse(text, nullptr, false);
    EXPECT_FALSE(parsed.is_discarded()) << text;
    out.push_back(parsed);
  }
  return out;
}

TEST(JsonSchema, ObjectsHaveRequiredPropertiesInOrderAndNoOthers) {
  const auto outputs = Generate(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 5},
      "age": {"type": "integer"},
      "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "minItems": 1, "maxItems": 2},
      "ok": {"type": ["boolean", "null"]}
    },
    "required": ["name", "tags"],
    "additionalProperties": false
  })",
                                40, 60);
  for (const auto& v : outputs) {
    ASSERT_TRUE(v.is_object()) << v;
    ASSERT_TRUE(v.contains("name")) << v;
    ASSERT_TRUE(v.contains("tags")) << v;
    for (const auto& [key, value] : v.items()) {
      EXPECT_THAT(key, ::testing::AnyOf("name", "age", "tags", "ok"));
    }
    EXPECT_TRUE(v["name"].is_string());
    EXPECT_LE(v["name"].get<std::string>().size(), 5u * 4);
    EXPECT_GE(v["tags"].size(), 1u);
    EXPECT_LE(v["tags"].size(), 2u);
    if (v.contains("age")) {
      EXPECT_TRUE(v["age"].is_number_integer()) << v;
    }
    if (v.contains("ok")) {
      EXPECT_TRUE(v["ok"].is_boolean() || v["ok"].is_null()) << v;
    }
  }
}

TEST(JsonSchema, RefsAnyOfConstAndFormats) {
  const auto outputs = Generate(R"({
    "$defs": {"node": {"type": "object", "properties": {
      "id": {"type": "string", "format": "uuid"},
      "when": {"type": "string", "format": "date-time"},
      "kind": {"const": "leaf"},
      "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
      "required": ["id", "when", "kind", "next"]}},
    "$ref": "#/$defs/node"
  })",
                                20, 400);
  for (const auto& v : outputs) {
    ASSERT_TRUE(v.is_object()) << v;
    EXPECT_EQ(v["kind"], "leaf");
    EXPECT_EQ(v["id"].get<std::string>().size(), 36u);
    EXPECT_TRUE(v["next"].is_null() || v["next"].is_object());
  }
}

TEST(JsonSchema, UnsupportedOrBrokenSchemasNameTheSpot) {
  auto minimum =
      JsonSchemaToGbnf(R"({"type":"object","properties":{"age":{"type":"integer","minimum":0}}})");
  ASSERT_FALSE(minimum.ok());
  EXPECT_THAT(minimum.status().message(), HasSubstr("#/properties/age/minimum"));
  EXPECT_THAT(minimum.status().message(), HasSubstr("'minimum' is not supported"));

  auto required = JsonSchemaToGbnf(R"({"type":"object","properties":{"a":{}},"required":["b"]})");
  ASSERT_FALSE(required.ok());
  EXPECT_THAT(required.status().message(), HasSubstr("'b' is not among the properties"));

  auto ref = JsonSchemaToGbnf(R"({"$ref":"#/$defs/missing"})");
  ASSERT_FALSE(ref.ok());
  EXPECT_THAT(ref.status().message(), HasSubstr("names no schema"));

  auto format = JsonSchemaToGbnf(R"({"type":"string","format":"email"})");
  ASSERT_FALSE(format.ok());
  EXPECT_THAT(format.status().message(), HasSubstr("#/format"));

  auto type = JsonSchemaToGbnf(R"({"type":"strnig"})");
  ASSERT_FALSE(type.ok());
  EXPECT_THAT(type.status().message(), HasSubstr("unknown type 'strnig'"));

  EXPECT_FALSE(JsonSchemaToGbnf("{not json").ok());
  EXPECT_FALSE(JsonSchemaToGbnf(R"({"oneOf":[{"type":"string"}]})").ok());
  EXPECT_FALSE(JsonSchemaToGbnf(R"({"type":"array","maxItems":1,"minItems":2})").ok());
}

}  // namespace
}  // namespace shardserve::grammar
