#include "router/tool_calls.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/grammar/grammar.h"
#include "model/grammar/matcher.h"

namespace shardserve {
namespace {

TEST(ToolCalls, HermesCallsAfterTextAreParsed) {
  ParsedOutput p = ParseToolCalls(
      ToolCallFormat::kHermes,
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": "
      "\"{\\\"zone\\\": \\\"CET\\\"}\"}\n</tool_call>");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.content, "Let me check.");
  EXPECT_EQ(p.calls[0].name(), "get_weather");
  EXPECT_EQ(p.calls[0].arguments(), "{\"city\":\"Paris\"}");
  EXPECT_EQ(p.calls[1].name(), "get_time");
  EXPECT_EQ(p.calls[1].arguments(), "{\"zone\":\"CET\"}");  // a JSON string holding the object
  EXPECT_NE(p.calls[0].id(), p.calls[1].id());
  EXPECT_EQ(p.calls[0].id().size(), 5u + 24u);
}

TEST(ToolCalls, WhatOnlyLooksLikeACallStaysText) {
  for (const std::string text :
       {"<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
        "<tool_call>\n{\"arguments\": {}}\n</tool_call>", "<tool_call>\n{\"name\": \"f\"",
        "just text"}) {
    ParsedOutput p = ParseToolCalls(ToolCallFormat::kHermes, text);
    EXPECT_TRUE(p.calls.empty()) << text;
    EXPECT_EQ(p.content, text);
  }
}

TEST(ToolCalls, Llama3JsonIsTheWholeAnswer) {
  ParsedOutput p = ParseToolCalls(ToolCallFormat::kLlama3Json,
                                  " {\"name\": \"f\", \"parameters\": {\"x\": 1}} ");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments(), "{\"x\":1}");
  EXPECT_EQ(p.content, "");
  EXPECT_TRUE(ParseToolCalls(ToolCallFormat::kLlama3Json, "Hello {\"name\"").calls.empty());
}

// DeepSeek-V3's markers: calls after text, one per line, arguments in a ```json fence; text
// that only opens the markers stays content.
TEST(ToolCalls, DeepSeekV3CallsAreParsed) {
  const std::string two =
      "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
      "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜"
      "tool▁sep｜>get_time\n```json\n{\"zone\":\"CET\"}\n```<｜tool▁call▁end｜><"
      "｜tool▁calls▁end｜>";
  ParsedOutput p = ParseToolCalls(ToolCallFormat::kDeepSeekV3, two);
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.content, "Let me check.");
  EXPECT_EQ(p.calls[0].name(), "get_weather");
  EXPECT_EQ(p.calls[0].arguments(), "{\"city\":\"Paris\"}");
  EXPECT_EQ(p.calls[1].name(), "get_time");
  EXPECT_EQ(p.calls[1].arguments(), "{\"zone\":\"CET\"}");
  EXPECT_NE(p.calls[0].id(), p.calls[1].id());
  for (const std::string& text :
       {std::string("no calls here"), std::string("<｜tool▁calls▁begin｜>"),
        std::string("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{"
                    "\"a\": \n```<｜tool▁call▁end｜>")}) {
    ParsedOutput q = ParseToolCalls(ToolCallFormat::kDeepSeekV3, text);
    EXPECT_TRUE(q.calls.empty()) << text;
    EXPECT_EQ(q.content, text);
  }
}

// What the grammar makes a model write is what the parser reads back.
TEST(ToolCalls, DeepSeekV3GrammarSentencesParse) {
  google::protobuf::RepeatedPtrField<v1::Tool> tools;
  v1::Tool* a = tools.Add();
  a->set_name("get_weather");
  a->set_parameters(
      R"({"type":"object","properties":{"city":{"enum":["Oslo"]}},"required":["city"]})");
  auto gbnf = ToolCallGbnf(ToolCallFormat::kDeepSeekV3, tools, "get_weather");
  ASSERT_TRUE(gbnf.ok()) << gbnf.status();
  auto g = grammar::Grammar::Parse(*gbnf);
  ASSERT_TRUE(g.ok()) << g.status();
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  auto vocab = std::make_shared<const grammar::Vocabulary>(bytes, std::vector<int32_t>{});
  // The only sentence (the enum fixes the arguments, spaces aside): follow the mask, taking
  // the first allowed byte that is not a space.
  grammar::Matcher m(*g, vocab);
  std::string text;
  while (!m.Finished() && text.size() < 400) {
    auto mask = m.Mask(-1);
    ASSERT_TRUE(mask.ok());
    int pick = -1;
    for (int b = 0; b < 256 && pick < 0; ++b) {
      if (((*mask)[b >> 3] >> (b & 7) & 1) && b != ' ' && b != '\n' && b != '\t') pick = b;
    }
    if (pick < 0) pick = '\n';
    ASSERT_TRUE(m.Accept(pick).ok());
    text.push_back(static_cast<char>(pick));
    if (m.CanEnd()) break;
  }
  ASSERT_TRUE(m.CanEnd()) << text;
  ParsedOutput p = ParseToolCalls(ToolCallFormat::kDeepSeekV3, text);
  ASSERT_EQ(p.calls.size(), 1u) << text;
  EXPECT_EQ(p.calls[0].name(), "get_weather");
  EXPECT_EQ(p.calls[0].arguments(), "{\"city\":\"Oslo\"}");
}

TEST(ToolCalls, GrammarsCompileAndNameBadSchemas) {
  google::protobuf::RepeatedPtrField<v1::Tool> tools;
  v1::Tool* a = tools.Add();
  a->set_name("get_weather");
  a->set_parameters(
      R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})");
  v1::Tool* b = tools.Add();
  b->set_name("free");
  for (ToolCallFormat f :
       {ToolCallFormat::kHermes, ToolCallFormat::kLlama3Json, ToolCallFormat::kDeepSeekV3}) {
    for (const std::string only : {"", "get_weather", "free"}) {
      auto gbnf = ToolCallGbnf(f, tools, only);
      ASSERT_TRUE(gbnf.ok()) << gbnf.status();
      EXPECT_TRUE(grammar::Grammar::Parse(*gbnf).ok()) << *gbnf;
    }
  }
  EXPECT_FALSE(ToolCallGbnf(ToolCallFormat::kHermes, tools, "missing").ok());
  a->set_parameters(R"({"type":"object","properties":{"n":{"type":"integer","minimum":1}}})");
  auto bad = ToolCallGbnf(ToolCallFormat::kHermes, tools, "");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("chat.tools[0].parameters"), std::string::npos);
  EXPECT_NE(bad.status().message().find("#/properties/n/minimum"), std::string::npos);
}

}  // namespace
}  // namespace shardserve
