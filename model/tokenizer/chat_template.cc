#include "model/tokenizer/chat_template.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

constexpr absl::string_view kFlagHelp =
    "pass --chat-template=llama2|llama3|chatml|deepseek-v3|deepseek-r1|mistral";

// Python's str.strip() for the whitespace that matters in prompts.
absl::string_view Strip(absl::string_view s) {
  constexpr absl::string_view kSpace = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == absl::string_view::npos) return {};
  const size_t e = s.find_last_not_of(kSpace);
  return s.substr(b, e - b + 1);
}

// Python's json.dumps(value, ensure_ascii=False) as transformers' `tojson` filter calls it:
// ", " and ": " between items, or with indent > 0 one item per line ("," at line ends).
void PyDumps(const nlohmann::ordered_json& v, int indent, int depth, std::string* out) {
  const bool nested = v.is_object() || v.is_array();
  if (!nested || v.empty()) {
    *out += v.is_object() ? "{}" : v.is_array() ? "[]" : v.dump();
    return;
  }
  const std::string pad =
      indent > 0 ? std::string(static_cast<size_t>(indent) * (depth + 1), ' ') : "";
  const std::string close_pad =
      indent > 0 ? "\n" + std::string(static_cast<size_t>(indent) * depth, ' ') : "";
  const char* sep = indent > 0 ? ",\n" : ", ";
  *out += v.is_object() ? "{" : "[";
  if (indent > 0) *out += "\n";
  bool first = true;
  if (v.is_object()) {
    for (const auto& [key, item] : v.items()) {
      if (!first) *out += sep;
      first = false;
      absl::StrAppend(out, pad, nlohmann::ordered_json(key).dump(), ": ");
      PyDumps(item, indent, depth + 1, out);
    }
  } else {
    for (const auto& item : v) {
      if (!first) *out += sep;
      first = false;
      *out += pad;
      PyDumps(item, indent, depth + 1, out);
    }
  }
  *out += close_pad;
  *out += v.is_object() ? "}" : "]";
}

std::string PyDumps(const nlohmann::ordered_json& v, int indent = 0) {
  std::string out;
  PyDumps(v, indent, 0, &out);
  return out;
}

// DeepSeek's system prompt: every system message, in order, joined by blank lines.
std::string DeepSeekSystem(const std::vector<ChatMessage>& messages) {
  std::string system;
  bool first = true;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!first) system += "\n\n";
    system += m.content;
    first = false;
  }
  return system;
}

// The tool as the request gave it: {"type": "function", "function": {...}}.
nlohmann::ordered_json ToolJson(const ChatTool& t) {
  nlohmann::ordered_json f;
  f["name"] = t.name;
  if (!t.description.empty()) f["description"] = t.description;
  if (!t.parameters.empty()) {
    auto p = nlohmann::ordered_json::parse(t.parameters, nullptr, false);
    if (!p.is_discarded()) f["parameters"] = p;
  }
  nlohmann::ordered_json tool;
  tool["type"] = "function";
  tool["function"] = f;
  return tool;
}

// `arguments | tojson` after the serving layer parsed the arguments string (as vLLM does): the
// object re-dumped, or the string quoted when it is not JSON.
std::string ArgumentsJson(const std::string& arguments) {
  auto a = nlohmann::ordered_json::parse(arguments, nullptr, false);
  return PyDumps(a.is_discarded() ? nlohmann::ordered_json(arguments) : a);
}

absl::Status Alternation() {
  return absl::InvalidArgumentError(
      "Conversation roles must alternate user/assistant/user/assistant/...");
}

}  // namespace

absl::string_view ChatTemplateName(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kLlama2:
      return "llama2";
    case ChatTemplateKind::kLlama3:
      return "llama3";
    case ChatTemplateKind::kChatML:
      return "chatml";
    case ChatTemplateKind::kDeepSeekV3:
      return "deepseek-v3";
    case ChatTemplateKind::kDeepSeekR1:
      return "deepseek-r1";
    case ChatTemplateKind::kMistral:
      return "mistral";
  }
  return "unknown";
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromName(absl::string_view name, std::string bos_token,
                                                    std::string eos_token) {
  for (ChatTemplateKind k :
       {ChatTemplateKind::kLlama2, ChatTemplateKind::kLlama3, ChatTemplateKind::kChatML,
        ChatTemplateKind::kDeepSeekV3, ChatTemplateKind::kDeepSeekR1, ChatTemplateKind::kMistral}) {
    if (name == ChatTemplateName(k))
      return ChatTemplate(k, std::move(bos_token), std::move(eos_token));
  }
  if (name == "qwen" || name == "qwen2") {
    return ChatTemplate(ChatTemplateKind::kChatML, std::move(bos_token), std::move(eos_token),
                        "You are a helpful assistant.");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template \"", name, "\": ", kFlagHelp, " (or qwen2)"));
}

absl::StatusOr<ChatTemplate> ChatTemplate::Detect(absl::string_view jinja, std::string bos_token,
                                                  std::string eos_token) {
  if (Strip(jinja).empty()) {
    return absl::NotFoundError(absl::StrCat(
        "the model has no chat template (tokenizer_config.json chat_template): ", kFlagHelp));
  }
  ChatTemplateKind kind;
  std::string default_system;
  if (absl::StrContains(jinja, "<|start_header_id|>")) {
    kind = ChatTemplateKind::kLlama3;
  } else if (absl::StrContains(jinja, "<|im_start|>")) {
    kind = ChatTemplateKind::kChatML;
    // Qwen2/2.5 insert a default system turn; the text follows the template.
    for (absl::string_view candidate :
         {"You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
          "You are a helpful assistant."}) {
      if (absl::StrContains(jinja, absl::StrCat("<|im_start|>system\\n", candidate)) ||
          absl::StrContains(jinja, absl::StrCat("<|im_start|>system\n", candidate))) {
        default_system = std::string(candidate);
        break;
      }
    }
  } else if (absl::StrContains(jinja, "<｜User｜>")) {
    kind = absl::StrContains(jinja, "</think>") ? ChatTemplateKind::kDeepSeekR1
                                                : ChatTemplateKind::kDeepSeekV3;
  } else if (absl::StrContains(jinja, "[INST]")) {
    kind = absl::StrContains(jinja, "<<SYS>>") ? ChatTemplateKind::kLlama2
                                               : ChatTemplateKind::kMistral;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unrecognised chat template in the model's tokenizer config: ", kFlagHelp));
  }
  return ChatTemplate(kind, std::move(bos_token), std::move(eos_token), std::move(default_system));
}

ToolCallFormat ChatTemplate::tool_call_format() const {
  switch (kind_) {
    case ChatTemplateKind::kChatML:
      return ToolCallFormat::kHermes;
    case ChatTemplateKind::kLlama3:
      return ToolCallFormat::kLlama3Json;
    case ChatTemplateKind::kDeepSeekV3:
      return ToolCallFormat::kDeepSeekV3;
    default:
      return ToolCallFormat::kNone;
  }
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 const std::vector<ChatTool>& tools,
                                                 bool add_generation_prompt) const {
  bool tool_messages = !tools.empty();
  for (const ChatMessage& m : messages) {
    tool_messages = tool_messages || m.role == "tool" || !m.tool_calls.empty();
    if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "tool") {
      return absl::InvalidArgumentError(absl::StrCat("unsupported chat role \"", m.role, "\""));
    }
  }
  if (!tool_messages) return Render(messages, add_generation_prompt);
  std::string out;
  switch (tool_call_format()) {
    case ToolCallFormat::kHermes: {
      // Qwen2.5's template (Qwen3's without reasoning is the same).
      size_t first = 0;
      if (!tools.empty()) {
        out += "<|im_start|>system\n";
        if (!messages.empty() && messages[0].role == "system") {
          absl::StrAppend(&out, messages[0].content, "\n\n");
          first = 1;
        } else if (!default_system_.empty()) {
          absl::StrAppend(&out, default_system_, "\n\n");
        }
        out +=
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
        for (const ChatTool& t : tools) absl::StrAppend(&out, "\n", PyDumps(ToolJson(t)));
        out +=
            "\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
            "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";
      } else if (!default_system_.empty() && (messages.empty() || messages[0].role != "system")) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (size_t i = first; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "tool") {
          if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
          absl::StrAppend(&out, "\n<tool_response>\n", m.content, "\n</tool_response>");
          if (i + 1 == messages.size() || messages[i + 1].role != "tool") out += "<|im_end|>\n";
        } else if (m.role == "assistant" && !m.tool_calls.empty()) {
          out += "<|im_start|>assistant";
          if (!m.content.empty()) absl::StrAppend(&out, "\n", m.content);
          for (const ChatToolCall& c : m.tool_calls) {
            absl::StrAppend(&out, "\n<tool_call>\n{\"name\": \"", c.name,
                            "\", \"arguments\": ", ArgumentsJson(c.arguments), "}\n</tool_call>");
          }
          out += "<|im_end|>\n";
        } else {
          absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
        }
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case ToolCallFormat::kLlama3Json: {
      // Llama-3.1's template with tools_in_user_message (its default) and no built-in tools.
      size_t i = 0;
      std::string system;
      if (!messages.empty() && messages[0].role == "system") {
        system = std::string(Strip(messages[0].content));
        i = 1;
      }
      absl::StrAppend(&out, bos_, "<|start_header_id|>system<|end_header_id|>\n\n");
      if (!tools.empty()) out += "Environment: ipython\n";
      absl::StrAppend(&out, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
                      system, "<|eot_id|>");
      if (!tools.empty()) {
        if (i >= messages.size()) {
          return absl::InvalidArgumentError(
              "Cannot put tools in the first user message when there's no first user message!");
        }
        const std::string first_user(Strip(messages[i].content));
        ++i;
        out +=
            "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please "
            "respond with a JSON for a function call with its proper arguments that best answers "
            "the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
            "dictionary of argument name and its value}.Do not use variables.\n\n";
        for (const ChatTool& t : tools) absl::StrAppend(&out, PyDumps(ToolJson(t), 4), "\n\n");
        absl::StrAppend(&out, first_user, "<|eot_id|>");
      }
      for (; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "tool") {
          // A string is iterable in Jinja: the template quotes it as JSON.
          absl::StrAppend(&out, "<|start_header_id|>ipython<|end_header_id|>\n\n",
                          nlohmann::ordered_json(m.content).dump(), "<|eot_id|>");
        } else if (!m.tool_calls.empty()) {
          if (m.tool_calls.size() != 1) {
            return absl::InvalidArgumentError(
                "This model only supports single tool-calls at once!");
          }
          absl::StrAppend(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"",
                          m.tool_calls[0].name,
                          "\", \"parameters\": ", ArgumentsJson(m.tool_calls[0].arguments),
                          "}<|eot_id|>");
        } else {
          absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n",
                          Strip(m.content), "<|eot_id|>");
        }
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
    case ToolCallFormat::kDeepSeekV3: {
      // DeepSeek-V3's template for the conversation. Where it slips, this follows what it
      // evidently means (as DeepSeek's later templates and vLLM's tool template do): every
      // assistant turn of calls is closed with <｜tool▁calls▁end｜>, each run of tool results
      // opens with <｜tool▁outputs▁begin｜> and closes with <｜tool▁outputs▁end｜>.
      const std::string system = DeepSeekSystem(messages);
      absl::StrAppend(&out, bos_, system);
      if (!tools.empty()) {
        if (!system.empty()) out += "\n\n";
        out += "## Tools\n\nYou can call these functions:\n";
        for (const ChatTool& t : tools) absl::StrAppend(&out, "\n", ToolJson(t).dump());
        out +=
            "\n\nTo call functions, write <｜tool▁calls▁begin｜>, then each call as "
            "<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGUMENTS\n```"
            "<｜tool▁call▁end｜> (one per line), then <｜tool▁calls▁end｜>.";
      }
      bool in_results = false;
      for (const ChatMessage& m : messages) {
        if (m.role == "tool") {
          absl::StrAppend(&out, in_results ? "\n" : "<｜tool▁outputs▁begin｜>",
                          "<｜tool▁output▁begin｜>", m.content, "<｜tool▁output▁end｜>");
          in_results = true;
          continue;
        }
        if (in_results) out += "<｜tool▁outputs▁end｜>";
        const bool after_results = in_results;
        in_results = false;
        if (m.role == "user") {
          absl::StrAppend(&out, "<｜User｜>", m.content);
        } else if (m.role == "assistant") {
          // After results the answer follows them directly, as in the published template.
          if (!after_results) out += "<｜Assistant｜>";
          out += m.content;
          if (!m.tool_calls.empty()) {
            out += "<｜tool▁calls▁begin｜>";
            for (size_t k = 0; k < m.tool_calls.size(); ++k) {
              absl::StrAppend(&out, k == 0 ? "" : "\n",
                              "<｜tool▁call▁begin｜>function<｜tool▁sep｜>", m.tool_calls[k].name,
                              "\n```json\n", m.tool_calls[k].arguments, "\n```<｜tool▁call▁end｜>");
            }
            out += "<｜tool▁calls▁end｜>";
          }
          out += "<｜end▁of▁sentence｜>";
        }
      }
      if (in_results) {
        out += "<｜tool▁outputs▁end｜>";  // the answer follows the results directly
      } else if (add_generation_prompt) {
        out += "<｜Assistant｜>";
      }
      return out;
    }
    case ToolCallFormat::kNone:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("tools: the ", ChatTemplateName(kind_),
                   " chat template renders no tools (tool calls are served with the chatml/qwen2, "
                   "llama3 and deepseek-v3 templates)"));
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt) const {
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("unsupported chat role \"", m.role, "\""));
    }
  }
  std::string out;
  switch (kind_) {
    case ChatTemplateKind::kLlama3: {
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0) out += bos_;
        absl::StrAppend(&out, "<|start_header_id|>", messages[i].role, "<|end_header_id|>\n\n",
                        Strip(messages[i].content), "<|eot_id|>");
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    }
    case ChatTemplateKind::kChatML: {
      if (!default_system_.empty() && (messages.empty() || messages[0].role != "system")) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    }
    case ChatTemplateKind::kDeepSeekV3:
    case ChatTemplateKind::kDeepSeekR1: {
      const bool r1 = kind_ == ChatTemplateKind::kDeepSeekR1;
      out += bos_;
      out += DeepSeekSystem(messages);
      for (const ChatMessage& m : messages) {
        if (m.role == "user") {
          absl::StrAppend(&out, "<｜User｜>", m.content);
        } else if (m.role == "assistant") {
          absl::string_view content = m.content;
          if (r1) {
            const size_t think_end = content.rfind("</think>");
            if (think_end != absl::string_view::npos) content = content.substr(think_end + 8);
          }
          absl::StrAppend(&out, "<｜Assistant｜>", content, "<｜end▁of▁sentence｜>");
        }
      }
      if (add_generation_prompt) out += r1 ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>";
      break;
    }
    case ChatTemplateKind::kLlama2: {
      size_t start = 0;
      std::string system;
      bool has_system = false;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content;
        has_system = true;
        start = 1;
      }
      for (size_t i = start; i < messages.size(); ++i) {
        const size_t k = i - start;
        const ChatMessage& m = messages[i];
        if ((m.role == "user") != (k % 2 == 0)) return Alternation();
        std::string content = m.content;
        if (k == 0 && has_system) {
          content = absl::StrCat("<<SYS>>\n", system, "\n<</SYS>>\n\n", m.content);
        }
        if (m.role == "user") {
          absl::StrAppend(&out, bos_, "[INST] ", Strip(content), " [/INST]");
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, " ", Strip(content), " ", eos_);
        }  // the published template renders nothing for other roles
      }
      break;
    }
    case ChatTemplateKind::kMistral: {
      out += bos_;
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if ((m.role == "user") != (i % 2 == 0)) return Alternation();
        if (m.role == "user") {
          absl::StrAppend(&out, "[INST] ", m.content, " [/INST]");
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, m.content, eos_);
        } else {
          return absl::InvalidArgumentError("Only user and assistant roles are supported!");
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace shardserve
