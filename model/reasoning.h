// Splits a model's streamed output into reasoning and answer, for R1-style models that think
// inside <think> ... </think> before answering, as vLLM's DeepSeek-R1 reasoning parser does: the
// text between the tags is reasoning_content, the rest is content.
//
// R1's chat template opens <think> in the prompt, so the model's output may start inside the
// reasoning with no opening tag; `starts_in_reasoning` says so (detected from the chat template
// by the caller). An opening tag at the very start of the output (after whitespace) is accepted
// either way and dropped. Tags may arrive split across any number of pieces: text that could be
// the start of a tag is held back until it is known not to be one, so nothing is emitted twice or
// on the wrong side. Only the first </think> ends the reasoning.
//
// One parser per sequence; not thread-safe.
//
// The router runs one per request when --reasoning-parser resolves to deepseek_r1
// (ResolveReasoningParser) and sets starts_in_reasoning when the prompt itself ends inside an
// opened <think> (PromptOpensReasoning), which is how R1's template asks for reasoning.
#ifndef SHARDSERVE_MODEL_REASONING_H_
#define SHARDSERVE_MODEL_REASONING_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve {

struct ReasoningDelta {
  std::string reasoning;
  std::string content;
};

class ReasoningParser {
 public:
  struct Options {
    std::string start_tag = "<think>";
    std::string end_tag = "</think>";
    bool starts_in_reasoning = false;
  };

  ReasoningParser() : ReasoningParser(Options{}) {}
  explicit ReasoningParser(Options options);

  // Feeds the next piece of decoded text; returns what can be emitted now.
  ReasoningDelta Push(absl::string_view text);
  // End of the stream: emits whatever was held back.
  ReasoningDelta Finish();

  bool in_reasoning() const { return state_ == State::kReasoning; }

 private:
  enum class State { kStart, kReasoning, kContent };

  Options options_;
  State state_ = State::kStart;
  std::string pending_;  // text not yet emitted
};

// Which reasoning parser a server runs.
enum class ReasoningParserKind { kNone, kDeepseekR1 };

// "deepseek_r1", "none"; "" for anything else.
absl::string_view ReasoningParserName(ReasoningParserKind kind);

// The --reasoning-parser flag: "deepseek_r1", "none", or "auto", which is deepseek_r1 when the
// chat template opens <think> in its generation prompt (DeepSeek-R1) or the vocabulary holds
// both <think> and </think> as tokens (R1 and its distills, QwQ, Qwen3), else none.
// INVALID_ARGUMENT naming the flag for other values.
absl::StatusOr<ReasoningParserKind> ResolveReasoningParser(absl::string_view flag,
                                                           bool template_opens_reasoning,
                                                           bool vocabulary_has_tags);

// True when `prompt` (its end is enough) ends, but for whitespace, with `start_tag`: the
// output that follows starts inside the reasoning.
bool PromptOpensReasoning(absl::string_view prompt, absl::string_view start_tag = "<think>");

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_REASONING_H_
