#include "model/tokenizer/chat_template.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

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
      std::string system;
      bool first_system = true;
      for (const ChatMessage& m : messages) {
        if (m.role != "system") continue;
        if (!first_system) system += "\n\n";
        system += m.content;
        first_system = false;
      }
      out += bos_;
      out += system;
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
