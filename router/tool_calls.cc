#include "router/tool_calls.h"

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "model/grammar/grammar.h"
#include "model/grammar/json_schema.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using ordered_json = nlohmann::ordered_json;

std::string Trim(std::string_view s) {
  return std::string(absl::StripAsciiWhitespace(absl::string_view(s.data(), s.size())));
}

// The arguments object of a call as compact JSON, or nullopt when it is not an object.
std::optional<std::string> Arguments(const ordered_json& call, const char* key) {
  auto it = call.find(key);
  if (it == call.end()) return std::nullopt;
  if (it->is_string()) {
    // Some models write the arguments as a JSON string holding the object.
    auto inner = ordered_json::parse(it->get<std::string>(), nullptr, false);
    if (inner.is_object()) return inner.dump();
    return std::nullopt;
  }
  if (!it->is_object()) return std::nullopt;
  return it->dump();
}

// One {"name": ..., <args_key>: {...}} call, or nullopt.
std::optional<v1::ToolCall> CallFromJson(const std::string& text, const char* args_key) {
  auto v = ordered_json::parse(text, nullptr, false);
  if (!v.is_object()) return std::nullopt;
  auto name = v.find("name");
  if (name == v.end() || !name->is_string() || name->get<std::string>().empty()) {
    return std::nullopt;
  }
  auto args = Arguments(v, args_key);
  if (!args.has_value()) args = Arguments(v, "arguments");
  if (!args.has_value()) return std::nullopt;
  v1::ToolCall call;
  call.set_id(NewToolCallId());
  call.set_name(name->get<std::string>());
  call.set_arguments(*args);
  return call;
}

constexpr char kDsCallsBegin[] = "<｜tool▁calls▁begin｜>";
constexpr char kDsCallsEnd[] = "<｜tool▁calls▁end｜>";
constexpr char kDsCallBegin[] = "<｜tool▁call▁begin｜>";
constexpr char kDsCallEnd[] = "<｜tool▁call▁end｜>";
constexpr char kDsSep[] = "<｜tool▁sep｜>";

// DeepSeek-V3's calls after optional text; nullopt unless every call between the markers
// parses (then the whole text is content).
std::optional<ParsedOutput> ParseDeepSeekCalls(const std::string& text) {
  const size_t begin = text.find(kDsCallsBegin);
  if (begin == std::string::npos) return std::nullopt;
  ParsedOutput out;
  out.content = Trim(text.substr(0, begin));
  size_t pos = begin + (sizeof(kDsCallsBegin) - 1);
  while (true) {
    while (pos < text.size() && (text[pos] == '\n' || text[pos] == ' ')) ++pos;
    if (text.compare(pos, (sizeof(kDsCallBegin) - 1), kDsCallBegin) != 0) break;
    const size_t sep = text.find(kDsSep, pos);
    const size_t end = text.find(kDsCallEnd, pos);
    if (sep == std::string::npos || end == std::string::npos || sep > end) return std::nullopt;
    // NAME, then the arguments: a ```json fence around them, or none.
    const std::string body =
        text.substr(sep + (sizeof(kDsSep) - 1), end - sep - (sizeof(kDsSep) - 1));
    const size_t nl = body.find('\n');
    if (nl == std::string::npos) return std::nullopt;
    absl::string_view args = absl::string_view(body).substr(nl + 1);
    if (absl::ConsumePrefix(&args, "```json")) {
      args = absl::StripTrailingAsciiWhitespace(args);
      if (!absl::ConsumeSuffix(&args, "```")) return std::nullopt;
    }
    const auto parsed = ordered_json::parse(std::string(args), nullptr, false);
    const std::string name = Trim(body.substr(0, nl));
    if (!parsed.is_object() || name.empty()) return std::nullopt;
    v1::ToolCall call;
    call.set_id(NewToolCallId());
    call.set_name(name);
    call.set_arguments(parsed.dump());
    out.calls.push_back(std::move(call));
    pos = end + (sizeof(kDsCallEnd) - 1);
  }
  if (out.calls.empty()) return std::nullopt;
  return out;
}

}  // namespace

std::string NewToolCallId() {
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local absl::BitGen gen;
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id.push_back(kChars[absl::Uniform(gen, 0u, 62u)]);
  return id;
}

absl::StatusOr<std::string> ToolCallGbnf(ToolCallFormat format,
                                         const google::protobuf::RepeatedPtrField<v1::Tool>& tools,
                                         const std::string& only) {
  std::string rules;
  std::string calls;
  for (int i = 0; i < tools.size(); ++i) {
    const v1::Tool& t = tools[i];
    if (!only.empty() && t.name() != only) continue;
    const std::string args = absl::StrCat("tool", i, "-args");
    if (t.parameters().empty()) {
      absl::StrAppend(&rules, args, " ::= json-object\n");
    } else {
      auto r = grammar::JsonSchemaRules(t.parameters(), args);
      if (!r.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("chat.tools[", i, "].parameters: ", r.status().message()));
      }
      rules += *r;
    }
    const std::string name_json = ordered_json(t.name()).dump();
    std::string call;
    if (format == ToolCallFormat::kHermes) {
      call = absl::StrCat(grammar::GbnfLiteral(absl::StrCat("<tool_call>\n{\"name\": ", name_json,
                                                            ", \"arguments\": ")),
                          " ", args, " ", grammar::GbnfLiteral("}\n</tool_call>"));
    } else if (format == ToolCallFormat::kDeepSeekV3) {
      call = absl::StrCat(grammar::GbnfLiteral(absl::StrCat(kDsCallBegin, "function", kDsSep,
                                                            t.name(), "\n```json\n")),
                          " ", args, " ", grammar::GbnfLiteral(absl::StrCat("\n```", kDsCallEnd)));
    } else {
      call = absl::StrCat(
          grammar::GbnfLiteral(absl::StrCat("{\"name\": ", name_json, ", \"parameters\": ")), " ",
          args, " ", grammar::GbnfLiteral("}"));
    }
    absl::StrAppend(&calls, calls.empty() ? "" : " | ", "( ", call, " )");
  }
  if (calls.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tool_choice: no tool named '", only, "'"));
  }
  std::string root;
  if (format == ToolCallFormat::kHermes && only.empty()) {
    root = "root ::= tool-call ( \"\\n\" tool-call )*\n";
  } else if (format == ToolCallFormat::kDeepSeekV3) {
    root = absl::StrCat("root ::= ", grammar::GbnfLiteral(kDsCallsBegin), " tool-call ",
                        only.empty() ? "( \"\\n\" tool-call )* " : "",
                        grammar::GbnfLiteral(kDsCallsEnd), "\n");
  } else {
    root = "root ::= tool-call\n";
  }
  return absl::StrCat(root, "tool-call ::= ", calls, "\n", rules, grammar::JsonPrimitivesGbnf());
}

ParsedOutput ParseToolCalls(ToolCallFormat format, const std::string& text) {
  ParsedOutput out;
  if (format == ToolCallFormat::kLlama3Json) {
    const std::string t = Trim(text);
    if (!t.empty() && t.front() == '{') {
      if (auto call = CallFromJson(t, "parameters"); call.has_value()) {
        out.calls.push_back(*std::move(call));
        return out;
      }
    }
    out.content = t;
    return out;
  }
  if (format == ToolCallFormat::kDeepSeekV3) {
    if (auto parsed = ParseDeepSeekCalls(text); parsed.has_value()) return *std::move(parsed);
    out.content = text;
    return out;
  }
  if (format != ToolCallFormat::kHermes) {
    out.content = text;
    return out;
  }
  static constexpr std::string_view kOpen = "<tool_call>", kClose = "</tool_call>";
  std::string content;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find(kOpen, pos);
    if (open == std::string::npos) break;
    const size_t close = text.find(kClose, open + kOpen.size());
    if (close == std::string::npos) break;
    auto call =
        CallFromJson(text.substr(open + kOpen.size(), close - open - kOpen.size()), "arguments");
    if (!call.has_value()) break;
    content += text.substr(pos, open - pos);
    out.calls.push_back(*std::move(call));
    pos = close + kClose.size();
  }
  content += text.substr(pos);
  out.content = Trim(content);
  if (out.calls.empty()) out.content = text;
  return out;
}

}  // namespace shardserve
