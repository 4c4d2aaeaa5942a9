// Chat templates: turn a conversation into the prompt text a chat model was trained on.
//
// The families are recognised from tokenizer_config.json's Jinja `chat_template` (by the markers
// each family's published template uses) or picked by name with the `--chat-template` flag. The
// renderings follow the published templates byte for byte for plain text conversations (no
// tools). The rendered text already contains the BOS text where the template emits it, so
// encode it with add_bos=false.
//
// A ChatTemplate is immutable and thread-safe.
#ifndef SHARDSERVE_MODEL_TOKENIZER_CHAT_TEMPLATE_H_
#define SHARDSERVE_MODEL_TOKENIZER_CHAT_TEMPLATE_H_

#include <string>
#include <utility>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace shardserve {

// A call an assistant message made.
struct ChatToolCall {
  std::string name;
  std::string arguments;  // JSON text
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
  std::vector<ChatToolCall> tool_calls = {};  // assistant
  std::string tool_call_id = {};              // tool
};

// A function the model may call, rendered into the prompt.
struct ChatTool {
  std::string name;
  std::string description;  // may be empty
  std::string parameters;   // JSON Schema as JSON text; empty: none given
};

// How a family's model writes tool calls.
enum class ToolCallFormat {
  kNone,    // the template renders no tools
  kHermes,  // ChatML (Qwen2.5, Qwen3): <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
  kLlama3Json,  // Llama-3.1+: the whole answer is {"name": ..., "parameters": {...}}
  // DeepSeek-V3: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
  // ```json\n{...}\n```<｜tool▁call▁end｜> (more calls after "\n") <｜tool▁calls▁end｜>
  kDeepSeekV3,
};

enum class ChatTemplateKind {
  kLlama2,      // [INST] <<SYS>> ... (meta-llama/Llama-2-*-chat)
  kLlama3,      // <|start_header_id|> ... <|eot_id|> (Llama-3 / 3.1 instruct, without tools)
  kChatML,      // <|im_start|> ... <|im_end|> (Qwen2/2.5/3, many others)
  kDeepSeekV3,  // <｜User｜> ... <｜Assistant｜> (DeepSeek-V3)
  kDeepSeekR1,  // as V3, drops reasoning from history, generation prompt opens <think>
  kMistral,     // [INST] ... [/INST] (Mistral-7B-Instruct v0.1/v0.2, Mixtral)
};

// Flag spellings: "llama2", "llama3", "chatml", "deepseek-v3", "deepseek-r1", "mistral".
absl::string_view ChatTemplateName(ChatTemplateKind kind);

class ChatTemplate {
 public:
  // By flag value; INVALID_ARGUMENT listing the accepted names otherwise.
  static absl::StatusOr<ChatTemplate> FromName(absl::string_view name, std::string bos_token,
                                               std::string eos_token);
  // From the Jinja source in tokenizer_config.json / GGUF. NOT_FOUND when `jinja` is empty,
  // INVALID_ARGUMENT when it is not one of the known families; both messages name the
  // --chat-template flag.
  static absl::StatusOr<ChatTemplate> Detect(absl::string_view jinja, std::string bos_token,
                                             std::string eos_token);

  ChatTemplate(ChatTemplateKind kind, std::string bos_token, std::string eos_token,
               std::string default_system = "")
      : kind_(kind),
        bos_(std::move(bos_token)),
        eos_(std::move(eos_token)),
        default_system_(std::move(default_system)) {}

  ChatTemplateKind kind() const { return kind_; }
  // INVALID_ARGUMENT for conversations the template rejects (e.g. roles that do not alternate
  // user/assistant for Llama-2 and Mistral, or an unknown role).
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt) const;
  // With tools (and tool calls and results in `messages`), as the family's published template
  // renders them: Qwen2.5's (ChatML), Llama-3.1's JSON tool calling (tools in the first user
  // message) and DeepSeek-V3's (calls and results as its template writes them; the tools, which
  // that template leaves out, listed after the system prompt). INVALID_ARGUMENT for a family
  // whose template renders no tools.
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     const std::vector<ChatTool>& tools,
                                     bool add_generation_prompt) const;
  ToolCallFormat tool_call_format() const;

 private:
  ChatTemplateKind kind_;
  std::string bos_, eos_;
  std::string default_system_;  // ChatML: system turn added when the conversation has none
};

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_TOKENIZER_CHAT_TEMPLATE_H_
