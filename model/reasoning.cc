#include "model/reasoning.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace shardserve {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
size_t PartialTagSuffix(absl::string_view text, absl::string_view tag) {
  for (size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n) {
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

ReasoningParser::ReasoningParser(Options options) : options_(std::move(options)) {}

ReasoningDelta ReasoningParser::Push(absl::string_view text) {
  pending_.append(text.data(), text.size());
  ReasoningDelta d;
  while (true) {
    switch (state_) {
      case State::kStart: {
        const size_t first = pending_.find_first_not_of(" \t\r\n");
        const absl::string_view rest = first == std::string::npos
                                           ? absl::string_view()
                                           : absl::string_view(pending_).substr(first);
        const absl::string_view tag = options_.start_tag;
        if (rest.size() >= tag.size() && rest.substr(0, tag.size()) == tag) {
          pending_.erase(0, first + tag.size());
          state_ = State::kReasoning;
          continue;
        }
        if (tag.substr(0, rest.size()) == rest) return d;  // could still become the tag
        state_ = options_.starts_in_reasoning ? State::kReasoning : State::kContent;
        continue;
      }
      case State::kReasoning: {
        const size_t end = pending_.find(options_.end_tag);
        if (end != std::string::npos) {
          d.reasoning.append(pending_, 0, end);
          pending_.erase(0, end + options_.end_tag.size());
          state_ = State::kContent;
          continue;
        }
        const size_t keep = PartialTagSuffix(pending_, options_.end_tag);
        d.reasoning.append(pending_, 0, pending_.size() - keep);
        pending_.erase(0, pending_.size() - keep);
        return d;
      }
      case State::kContent:
        d.content += pending_;
        pending_.clear();
        return d;
    }
  }
}

ReasoningDelta ReasoningParser::Finish() {
  ReasoningDelta d;
  if (state_ == State::kStart) {
    state_ = options_.starts_in_reasoning ? State::kReasoning : State::kContent;
  }
  (state_ == State::kReasoning ? d.reasoning : d.content) += pending_;
  pending_.clear();
  return d;
}

absl::string_view ReasoningParserName(ReasoningParserKind kind) {
  switch (kind) {
    case ReasoningParserKind::kNone:
      return "none";
    case ReasoningParserKind::kDeepseekR1:
      return "deepseek_r1";
  }
  return "";
}

absl::StatusOr<ReasoningParserKind> ResolveReasoningParser(absl::string_view flag,
                                                           bool template_opens_reasoning,
                                                           bool vocabulary_has_tags) {
  if (flag == "deepseek_r1") return ReasoningParserKind::kDeepseekR1;
  if (flag == "none") return ReasoningParserKind::kNone;
  if (flag == "auto") {
    return template_opens_reasoning || vocabulary_has_tags ? ReasoningParserKind::kDeepseekR1
                                                           : ReasoningParserKind::kNone;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--reasoning-parser: '", flag, "' is not one of auto, deepseek_r1, none"));
}

bool PromptOpensReasoning(absl::string_view prompt, absl::string_view start_tag) {
  return !start_tag.empty() &&
         absl::EndsWith(absl::StripTrailingAsciiWhitespace(prompt), start_tag);
}

}  // namespace shardserve
