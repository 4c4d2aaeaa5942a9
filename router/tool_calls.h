// Tool calls in chat: the grammar that makes a model call a tool (tool_choice `required` or a
// named function), and the parser that finds the calls in what a model wrote, for the formats
// the chat templates render (model/tokenizer/chat_template.h, ToolCallFormat):
//   Hermes (ChatML, Qwen2.5/Qwen3):  <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
//                                    one or more, separated by "\n", after optional text;
//   Llama-3.1 JSON:                  the whole answer is {"name": "f", "parameters": {...}};
//   DeepSeek-V3:                     <｜tool▁calls▁begin｜>, then one or more (after "\n")
//                                    <｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}
//                                    \n```<｜tool▁call▁end｜>, then <｜tool▁calls▁end｜>, after
//                                    optional text.
#ifndef SHARDSERVE_ROUTER_TOOL_CALLS_H_
#define SHARDSERVE_ROUTER_TOOL_CALLS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer/chat_template.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

// GBNF whose sentences are tool calls in `format` with arguments that satisfy each tool's
// parameters schema: one or more calls of any tool when `only` is empty (`required`), else
// exactly one call of `only`. INVALID_ARGUMENT naming the tool for a schema the grammar engine
// does not support.
absl::StatusOr<std::string> ToolCallGbnf(ToolCallFormat format,
                                         const google::protobuf::RepeatedPtrField<v1::Tool>& tools,
                                         const std::string& only);

struct ParsedOutput {
  std::string content;  // what the model wrote outside its calls, trimmed
  std::vector<v1::ToolCall> calls;
};

// The calls in `text`, each with a fresh id ("call_" and 24 random characters); the arguments
// as compact JSON. Text that only looks like a call (JSON that does not parse, no name) stays
// content.
ParsedOutput ParseToolCalls(ToolCallFormat format, const std::string& text);

// A fresh id for a tool call.
std::string NewToolCallId();

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_TOOL_CALLS_H_
