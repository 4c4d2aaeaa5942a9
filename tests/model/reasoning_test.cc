#include "model/reasoning.h"

#include <vector>

#include "gtest/gtest.h"

namespace shardserve {
namespace {

// Feeds `pieces` and returns everything emitted, reasoning and content.
ReasoningDelta Parse(ReasoningParser parser, const std::vector<std::string>& pieces) {
  ReasoningDelta all;
  for (const auto& p : pieces) {
    ReasoningDelta d = parser.Push(p);
    all.reasoning += d.reasoning;
    all.content += d.content;
  }
  ReasoningDelta d = parser.Finish();
  all.reasoning += d.reasoning;
  all.content += d.content;
  return all;
}

TEST(ReasoningParserTest, SplitsThinkBlock) {
  const auto d = Parse(ReasoningParser(), {"<think>\nLet me see.</think>\n\nThe answer is 4."});
  EXPECT_EQ(d.reasoning, "\nLet me see.");
  EXPECT_EQ(d.content, "\n\nThe answer is 4.");
}

TEST(ReasoningParserTest, NoTagsIsAllContent) {
  const auto d = Parse(ReasoningParser(), {"Hello", " <b>world</b>"});
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "Hello <b>world</b>");
}

TEST(ReasoningParserTest, TemplateOpenedThinkStartsInReasoning) {
  ReasoningParser::Options o;
  o.starts_in_reasoning = true;
  const auto d = Parse(ReasoningParser(o), {"Hmm, 2+2.", "</think>", "4"});
  EXPECT_EQ(d.reasoning, "Hmm, 2+2.");
  EXPECT_EQ(d.content, "4");
  // The model may still repeat the opening tag; it is dropped.
  const auto again = Parse(ReasoningParser(o), {"<think>x</think>y"});
  EXPECT_EQ(again.reasoning, "x");
  EXPECT_EQ(again.content, "y");
}

TEST(ReasoningParserTest, UnfinishedReasoningStaysReasoning) {
  const auto d = Parse(ReasoningParser(), {"<think>still thinking </thi"});
  EXPECT_EQ(d.reasoning, "still thinking </thi");
  EXPECT_EQ(d.content, "");
}

TEST(ReasoningParserTest, OnlyFirstEndTagCounts) {
  const auto d = Parse(ReasoningParser(), {"<think>a</think>b</think>c"});
  EXPECT_EQ(d.reasoning, "a");
  EXPECT_EQ(d.content, "b</think>c");
}

TEST(ReasoningParserTest, PartialTagIsHeldBackNotEmitted) {
  ReasoningParser p;
  EXPECT_EQ(p.Push("<th").content, "");
  ReasoningDelta d = p.Push("ink>abc</th");
  EXPECT_EQ(d.reasoning, "abc");  // "</th" held back
  d = p.Push("ank");              // not the end tag after all
  EXPECT_EQ(d.reasoning, "</thank");
  d = p.Push("</think>ok");
  EXPECT_EQ(d.content, "ok");
  EXPECT_FALSE(p.in_reasoning());
}

// Every way of cutting the text into pieces (one and two cuts, and one byte at a time) gives the
// same split as the whole text at once.
TEST(ReasoningParserTest, AnySplitGivesSameResult) {
  for (bool starts_in : {false, true}) {
    for (const std::string text :
         {"  <think>plan: a < b, </thin k></think>\n\nanswer <think> again",
          "reason only</think>answer", "<<think>>x</think>", "plain <think> text"}) {
      ReasoningParser::Options o;
      o.starts_in_reasoning = starts_in;
      const ReasoningDelta whole = Parse(ReasoningParser(o), {text});
      std::vector<std::string> bytes;
      for (char ch : text) bytes.emplace_back(1, ch);
      const ReasoningDelta by_byte = Parse(ReasoningParser(o), bytes);
      EXPECT_EQ(by_byte.reasoning, whole.reasoning) << text;
      EXPECT_EQ(by_byte.content, whole.content) << text;
      for (size_t i = 0; i <= text.size(); ++i) {
        for (size_t j = i; j <= text.size(); ++j) {
          const ReasoningDelta cut =
              Parse(ReasoningParser(o), {text.substr(0, i), text.substr(i, j - i), text.substr(j)});
          ASSERT_EQ(cut.reasoning, whole.reasoning) << text << " cut at " << i << "," << j;
          ASSERT_EQ(cut.content, whole.content) << text << " cut at " << i << "," << j;
        }
      }
    }
  }
  const auto d = Parse(ReasoningParser(), {"  <think>plan: a < b, </thin k></think>\n\nanswer"});
  EXPECT_EQ(d.reasoning, "plan: a < b, </thin k>");
  EXPECT_EQ(d.content, "\n\nanswer");
}

TEST(ReasoningParserFlagTest, AutoFollowsTheTemplateOrTheVocabulary) {
  using K = ReasoningParserKind;
  EXPECT_EQ(*ResolveReasoningParser("auto", true, false), K::kDeepseekR1);
  EXPECT_EQ(*ResolveReasoningParser("auto", false, true), K::kDeepseekR1);
  EXPECT_EQ(*ResolveReasoningParser("auto", false, false), K::kNone);
  EXPECT_EQ(*ResolveReasoningParser("none", true, true), K::kNone);
  EXPECT_EQ(*ResolveReasoningParser("deepseek_r1", false, false), K::kDeepseekR1);
  auto bad = ResolveReasoningParser("deepseek-r1", true, true);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--reasoning-parser"), std::string::npos);
  EXPECT_EQ(ReasoningParserName(K::kDeepseekR1), "deepseek_r1");
}

TEST(ReasoningParserFlagTest, PromptOpensReasoningOnlyWhenItEndsInTheTag) {
  EXPECT_TRUE(PromptOpensReasoning("<｜User｜>hi<｜Assistant｜><think>\n"));
  EXPECT_TRUE(PromptOpensReasoning("<think>"));
  EXPECT_FALSE(PromptOpensReasoning("<｜User｜>hi<｜Assistant｜>"));
  EXPECT_FALSE(PromptOpensReasoning("<think>x</think>\n"));
  EXPECT_FALSE(PromptOpensReasoning("say <think> then"));
  EXPECT_FALSE(PromptOpensReasoning(""));
}

}  // namespace
}  // namespace shardserve
