// InferenceServiceImpl's reasoning split, on the handler side of a RequestSink: which requests
// get a parser, and what Next makes of the pieces a replica pushes (tags split across pieces,
// text held back until the end, a stream that ends in an error).
#include "router/inference_service.h"

#include <fstream>
#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "model/synth.h"
#include "tests/testing/temp_dir.h"

namespace shardserve {
namespace {

using testing::TempDir;

class ReasoningSplitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_ / "tokenizer.json") << SynthTokenizerJson(512);
    auto tokenizer = Tokenizer::Load(dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    ModelConfig config;
    config.num_layers = 1;
    config.vocab_size = 512;
    config.max_position_embeddings = 512;
    service_ = std::make_unique<InferenceServiceImpl>("m", config, tokenizer_.get(), std::nullopt,
                                                      std::vector<Replica*>{});
    service_->set_reasoning_parser(ReasoningParserKind::kDeepseekR1);
  }

  InferenceServiceImpl::Generation NewGeneration(std::optional<ReasoningParser> parser) {
    InferenceServiceImpl::Generation g;
    g.sink = std::make_shared<RequestSink>();
    g.reasoning = std::move(parser);
    return g;
  }

  struct Output {
    std::vector<v1::GenerateResponse> responses;
    std::string text, reasoning;
    absl::Status error;
  };
  // Pushes each piece as one token, the last with a finish reason (or, with `fail`, ends the
  // stream with that error after the pieces), and collects what Next returns after each.
  Output Feed(InferenceServiceImpl::Generation& g, const std::vector<std::string>& pieces,
              absl::Status fail = absl::OkStatus()) {
    Output out;
    v1::Usage usage;
    for (size_t i = 0; i < pieces.size(); ++i) {
      v1::SampledToken token;
      token.set_token_id(static_cast<int32_t>(100 + i));
      const bool last = i + 1 == pieces.size() && fail.ok();
      g.sink->Push(pieces[i], &token, false,
                   last ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_UNSPECIFIED,
                   last ? &usage : nullptr);
      if (i + 1 == pieces.size() && !fail.ok()) {
        Take(g, out);  // the last piece, then the error on its own
        g.sink->Fail(fail);
      }
      Take(g, out);
    }
    return out;
  }

  void Take(InferenceServiceImpl::Generation& g, Output& out) {
    v1::GenerateResponse r;
    bool done = false;
    absl::Status error;
    ASSERT_TRUE(service_->Next(g, absl::Seconds(1), &r, &done, &error));
    out.text += r.text();
    out.reasoning += r.reasoning_text();
    out.error = error;
    out.responses.push_back(r);
  }

  TempDir dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<InferenceServiceImpl> service_;
};

TEST_F(ReasoningSplitTest, NextMovesTheThinkBlockIntoReasoningText) {
  auto g = NewGeneration(ReasoningParser());
  Output out = Feed(g, {"<thi", "nk>Let me", " see.</th", "ink>\n\nIt is", " 4."});
  EXPECT_EQ(out.reasoning, "Let me see.");
  EXPECT_EQ(out.text, "\n\nIt is 4.");
  ASSERT_EQ(out.responses.size(), 5u);
  // A piece that may be the start of a tag is held back, but its token still goes out.
  EXPECT_EQ(out.responses[0].text(), "");
  EXPECT_EQ(out.responses[0].reasoning_text(), "");
  EXPECT_EQ(out.responses[0].token_ids_size(), 1);
  EXPECT_EQ(out.responses[1].reasoning_text(), "Let me");
  EXPECT_EQ(out.responses[4].finish_reason(), v1::FINISH_REASON_STOP);
}

TEST_F(ReasoningSplitTest, HeldBackTextComesWithTheEndEvenAnError) {
  ReasoningParser::Options options;
  options.starts_in_reasoning = true;
  auto g = NewGeneration(ReasoningParser(options));
  Output out = Feed(g, {"abc", "</thi"}, absl::UnavailableError("stage 1 went away"));
  EXPECT_EQ(out.error.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(out.reasoning, "abc</thi");
  EXPECT_EQ(out.text, "");
  EXPECT_EQ(out.responses.back().reasoning_text(), "</thi");
}

TEST_F(ReasoningSplitTest, WithoutAParserTheTextIsUntouched) {
  auto g = NewGeneration(std::nullopt);
  Output out = Feed(g, {"<think>a", "</think>b"});
  EXPECT_EQ(out.text, "<think>a</think>b");
  EXPECT_EQ(out.reasoning, "");
}

TEST_F(ReasoningSplitTest, ChatPromptsSeparateByDefaultAndTheFieldDecides) {
  const std::vector<int32_t> opened = tokenizer_->Encode("<｜Assistant｜><think>\n", false);
  const std::vector<int32_t> plain = tokenizer_->Encode("<｜Assistant｜>", false);
  v1::GenerateRequest chat;
  chat.mutable_chat()->add_messages()->set_content("hi");
  v1::GenerateRequest text;
  text.set_text("hi");

  EXPECT_TRUE(service_->ReasoningParserFor(chat, plain).has_value());
  EXPECT_FALSE(service_->ReasoningParserFor(text, plain).has_value());
  text.set_separate_reasoning(true);
  EXPECT_TRUE(service_->ReasoningParserFor(text, plain).has_value());
  chat.set_separate_reasoning(false);
  EXPECT_FALSE(service_->ReasoningParserFor(chat, plain).has_value());
  chat.clear_separate_reasoning();

  // A prompt that ends with an open <think> puts the output in the reasoning from the start.
  auto parser = service_->ReasoningParserFor(chat, opened);
  ASSERT_TRUE(parser.has_value());
  EXPECT_EQ(parser->Push("Hmm.").reasoning, "Hmm.");
  parser = service_->ReasoningParserFor(chat, plain);
  EXPECT_EQ(parser->Push("Hmm.").content, "Hmm.");

  service_->set_reasoning_parser(ReasoningParserKind::kNone);
  EXPECT_FALSE(service_->ReasoningParserFor(chat, opened).has_value());
  EXPECT_FALSE(service_->ReasoningParserFor(text, opened).has_value());
}

// Under load a stream takes several tokens per message: Take waits for min_tokens (or the end)
// once output is there, and hands over what it has after max_delay.
TEST(RequestSink, BatchesTokensUnderLoadAndNeverHoldsTheEnd) {
  RequestSink sink;
  v1::SampledToken t;
  v1::GenerateResponse out;
  bool done = false;
  absl::Status error;
  std::thread producer([&] {
    for (int i = 0; i < 3; ++i) {
      t.set_token_id(10 + i);
      sink.Push("x", &t, false, v1::FINISH_REASON_UNSPECIFIED, nullptr);
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  ASSERT_TRUE(sink.Take(absl::Seconds(5), &out, &done, &error, 3, absl::Seconds(5)));
  producer.join();
  EXPECT_EQ(out.token_ids_size(), 3);
  EXPECT_EQ(out.text(), "xxx");
  EXPECT_FALSE(done);
  // Fewer than min_tokens: handed over once max_delay has passed.
  t.set_token_id(20);
  sink.Push("y", &t, false, v1::FINISH_REASON_UNSPECIFIED, nullptr);
  const absl::Time start = absl::Now();
  ASSERT_TRUE(sink.Take(absl::Seconds(5), &out, &done, &error, 8, absl::Milliseconds(30)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(29));
  EXPECT_EQ(out.token_ids_size(), 1);
  // The end is never held back for more tokens.
  sink.Push("z", &t, false, v1::FINISH_REASON_LENGTH, nullptr);
  const absl::Time end_start = absl::Now();
  ASSERT_TRUE(sink.Take(absl::Seconds(5), &out, &done, &error, 8, absl::Seconds(5)));
  EXPECT_LT(absl::Now() - end_start, absl::Seconds(1));
  EXPECT_TRUE(done);
  EXPECT_EQ(out.finish_reason(), v1::FINISH_REASON_LENGTH);
}

}  // namespace
}  // namespace shardserve
