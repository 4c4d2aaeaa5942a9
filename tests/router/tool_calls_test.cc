#include "router/tool_calls.h"

#include "gtest/gtest.h"
#include "model/grammar/grammar.h"

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

TEST(ToolCalls, GrammarsCompileAndNameBadSchemas) {
  google::protobuf::RepeatedPtrField<v1::Tool> tools;
  v1::Tool* a = tools.Add();
  a->set_name("get_weather");
  a->set_parameters(
      R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})");
  v1::Tool* b = tools.Add();
  b->set_name("free");
  for (ToolCallFormat f : {ToolCallFormat::kHermes, ToolCallFormat::kLlama3Json}) {
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
