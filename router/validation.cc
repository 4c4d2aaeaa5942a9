#include "router/validation.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/wire.h"

namespace shardserve {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status CheckRange(absl::string_view field, float v, float lo, float hi, bool lo_open) {
  if (std::isnan(v)) return Invalid(field, "is NaN");
  if ((lo_open ? v <= lo : v < lo) || v > hi) {
    return Invalid(field, absl::StrCat(v, " is outside ", lo_open ? "(" : "[", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelName(const std::string& model, const ModelLimits& limits) {
  if (model.empty() || model == limits.name) return absl::OkStatus();
  return Invalid(
      "model", absl::StrCat("unknown model '", model, "'; this router serves '", limits.name, "'"));
}

namespace {

absl::Status ValidateTools(const v1::GenerateRequest& r);

absl::Status ValidatePrompt(const v1::GenerateRequest& r, const ModelLimits& limits) {
  switch (r.prompt_case()) {
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Invalid("prompt", "empty: set text, token_ids or chat");
    case v1::GenerateRequest::kText:
      if (r.text().empty()) return Invalid("prompt", "empty text");
      return absl::OkStatus();
    case v1::GenerateRequest::kTokenIds: {
      if (r.token_ids().ids().empty()) return Invalid("prompt", "empty token_ids");
      for (int i = 0; i < r.token_ids().ids_size(); ++i) {
        const int32_t id = r.token_ids().ids(i);
        if (id < 0 || id >= limits.vocab_size) {
          return Invalid(absl::StrCat("token_ids.ids[", i, "]"),
                         absl::StrCat(id, " is outside [0, ", limits.vocab_size, ")"));
        }
      }
      return absl::OkStatus();
    }
    case v1::GenerateRequest::kChat: {
      const auto& messages = r.chat().messages();
      if (messages.empty()) return Invalid("prompt", "empty chat: no messages");
      if (messages.size() > kMaxChatMessages) {
        return Invalid("chat.messages", absl::StrCat("more than ", kMaxChatMessages));
      }
      RETURN_IF_ERROR(ValidateTools(r));
      for (int i = 0; i < messages.size(); ++i) {
        const std::string& role = messages[i].role();
        if (messages[i].tool_calls_size() > 0 && role != "assistant") {
          return Invalid(absl::StrCat("chat.messages[", i, "].tool_calls"),
                         "only assistant messages make tool calls");
        }
        for (int k = 0; k < messages[i].tool_calls_size(); ++k) {
          if (messages[i].tool_calls(k).name().empty()) {
            return Invalid(absl::StrCat("chat.messages[", i, "].tool_calls[", k, "].name"),
                           "is empty");
          }
        }
        if (role == "tool") continue;
        if (role != "system" && role != "developer" && role != "user" && role != "assistant") {
          return Invalid(
              absl::StrCat("chat.messages[", i, "].role"),
              absl::StrCat("'", role, "' is not system, developer, user, assistant or tool"));
        }
      }
      if (messages[messages.size() - 1].role() == "assistant") {
        return Invalid(absl::StrCat("chat.messages[", messages.size() - 1, "].role"),
                       "the last message must not be the assistant's");
      }
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateTools(const v1::GenerateRequest& r) {
  const v1::ChatPrompt& chat = r.chat();
  if (chat.tools_size() > kMaxTools) {
    return Invalid("chat.tools", absl::StrCat(chat.tools_size(), " tools; at most ", kMaxTools));
  }
  std::set<std::string> names;
  for (int i = 0; i < chat.tools_size(); ++i) {
    const std::string& name = chat.tools(i).name();
    const bool ok =
        !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
          return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
        });
    if (!ok) {
      return Invalid(absl::StrCat("chat.tools[", i, "].name"),
                     absl::StrCat("'", name, "' must be 1 to 64 of a-z, A-Z, 0-9, _ and -"));
    }
    if (!names.insert(name).second) {
      return Invalid(absl::StrCat("chat.tools[", i, "].name"), absl::StrCat("'", name, "' twice"));
    }
  }
  if (chat.has_tool_choice()) {
    const v1::ToolChoice& c = chat.tool_choice();
    if (c.has_function() && !names.contains(c.function())) {
      return Invalid("chat.tool_choice.function",
                     absl::StrCat("no tool named '", c.function(), "'"));
    }
    if (c.has_mode() && c.mode() == v1::TOOL_CHOICE_MODE_REQUIRED && names.empty()) {
      return Invalid("chat.tool_choice", "required, but no tools are given");
    }
    if (c.has_function() || (c.has_mode() && c.mode() == v1::TOOL_CHOICE_MODE_REQUIRED)) {
      if (r.has_response_format()) {
        return Invalid("response_format",
                       "cannot be combined with tool_choice required or a named function");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateStops(const v1::GenerateRequest& r, const ModelLimits& limits) {
  if (r.stop_size() > kMaxStopStrings) {
    return Invalid("stop", absl::StrCat(r.stop_size(), " stop strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < r.stop_size(); ++i) {
    if (r.stop(i).empty() || r.stop(i).size() > kMaxStopStringBytes) {
      return Invalid(absl::StrCat("stop[", i, "]"),
                     absl::StrCat("must have 1 to ", kMaxStopStringBytes, " bytes"));
    }
  }
  for (int i = 0; i < r.stop_token_ids_size(); ++i) {
    if (r.stop_token_ids(i) < 0 || r.stop_token_ids(i) >= limits.vocab_size) {
      return Invalid(absl::StrCat("stop_token_ids[", i, "]"),
                     absl::StrCat(r.stop_token_ids(i), " is outside [0, ", limits.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSampling(const v1::SamplingParameters& s) {
  if (s.has_temperature()) {
    if (std::isnan(s.temperature())) return Invalid("sampling.temperature", "is NaN");
    if (s.temperature() < 0 || s.temperature() > 100) {
      return Invalid("sampling.temperature", absl::StrCat(s.temperature(), " is outside [0, 100]"));
    }
  }
  if (s.has_top_p()) RETURN_IF_ERROR(CheckRange("sampling.top_p", s.top_p(), 0, 1, true));
  if (s.top_k() < 0) return Invalid("sampling.top_k", "is negative");
  RETURN_IF_ERROR(CheckRange("sampling.min_p", s.min_p(), 0, 1, false));
  if (s.has_repetition_penalty()) {
    RETURN_IF_ERROR(
        CheckRange("sampling.repetition_penalty", s.repetition_penalty(), 0, 100, true));
  }
  RETURN_IF_ERROR(CheckRange("sampling.presence_penalty", s.presence_penalty(), -100, 100, false));
  RETURN_IF_ERROR(
      CheckRange("sampling.frequency_penalty", s.frequency_penalty(), -100, 100, false));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& r, const ModelLimits& limits) {
  RETURN_IF_ERROR(ValidateModelName(r.model(), limits));
  if (r.request_id().size() > kMaxRequestIdBytes) {
    return Invalid("request_id", absl::StrCat("longer than ", kMaxRequestIdBytes, " bytes"));
  }
  RETURN_IF_ERROR(ValidatePrompt(r, limits));
  if (r.max_tokens() < 0)
    return Invalid("max_tokens", absl::StrCat(r.max_tokens(), " is negative"));
  if (r.max_tokens() >= limits.context) {
    return Invalid("max_tokens",
                   absl::StrCat(r.max_tokens(), " is past the context of ", limits.context));
  }
  RETURN_IF_ERROR(ValidateStops(r, limits));
  RETURN_IF_ERROR(ValidateSampling(r.sampling()));
  if (r.top_logprobs() < 0 || r.top_logprobs() > kMaxTopLogprobs) {
    return Invalid("top_logprobs",
                   absl::StrCat(r.top_logprobs(), " is outside [0, ", kMaxTopLogprobs, "]"));
  }
  if (r.top_logprobs() > 0 && !r.logprobs()) return Invalid("top_logprobs", "needs logprobs");
  return absl::OkStatus();
}

absl::Status ValidatePromptLength(int64_t prompt_tokens, int32_t max_tokens,
                                  const ModelLimits& limits) {
  if (prompt_tokens <= 0) return Invalid("prompt", "encodes to no tokens");
  if (prompt_tokens >= limits.context) {
    return Invalid("prompt", absl::StrCat(prompt_tokens, " tokens is longer than the context of ",
                                          limits.context, " allows (one token must fit after it)"));
  }
  if (prompt_tokens + max_tokens > limits.context) {
    return Invalid("max_tokens",
                   absl::StrCat("prompt of ", prompt_tokens, " tokens + max_tokens ", max_tokens,
                                " is past the context of ", limits.context));
  }
  return absl::OkStatus();
}

int32_t ResolveMaxTokens(int32_t max_tokens, int64_t prompt_tokens, const ModelLimits& limits,
                         int32_t limit) {
  if (max_tokens > 0) return max_tokens;
  int64_t room = std::max<int64_t>(1, limits.context - prompt_tokens);
  if (limit > 0) room = std::min<int64_t>(room, limit);
  return static_cast<int32_t>(room);
}

v1::StepSampling ResolveSampling(const v1::GenerateRequest& r, uint64_t fresh_seed) {
  const v1::SamplingParameters& s = r.sampling();
  v1::StepSampling out;
  out.set_temperature(s.has_temperature() ? s.temperature() : 1.0f);
  out.set_top_p(s.has_top_p() ? s.top_p() : 1.0f);
  out.set_top_k(s.top_k());
  out.set_min_p(s.min_p());
  out.set_repetition_penalty(s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f);
  out.set_presence_penalty(s.presence_penalty());
  out.set_frequency_penalty(s.frequency_penalty());
  out.set_seed(s.has_seed() ? s.seed() : fresh_seed);
  out.set_logprobs(r.logprobs());
  out.set_top_logprobs(r.logprobs() ? r.top_logprobs() : 0);
  return out;
}

}  // namespace shardserve
