// Chat templates: literal renderings derived from each family's published Jinja template.
#include "model/tokenizer/chat_template.h"

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/model/tokenizer/test_util.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

std::string RenderOrDie(const ChatTemplate& t, const std::vector<ChatMessage>& m, bool gen) {
  absl::StatusOr<std::string> s = t.Render(m, gen);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : "";
}

const std::vector<ChatMessage> kConversation = {
    {"system", "You are helpful."},
    {"user", "Hi!  "},
    {"assistant", "Hello."},
    {"user", "How are you?"},
};

TEST(ChatTemplateTest, Llama3) {
  ChatTemplate t(ChatTemplateKind::kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  // meta-llama/Meta-Llama-3-8B-Instruct: bos once, content | trim, header per message.
  EXPECT_EQ(RenderOrDie(t, kConversation, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are "
            "helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_"
            "header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|"
            "end_header_id|>\n\nHow are you?<|eot_id|><|start_header_id|>assistant<|end_header_"
            "id|>\n\n");
  EXPECT_EQ(RenderOrDie(t, {{"user", "x"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(ChatTemplateTest, ChatML) {
  ChatTemplate t(ChatTemplateKind::kChatML, "", "<|im_end|>");
  // Qwen3 for conversations without tools or reasoning; no default system turn.
  EXPECT_EQ(RenderOrDie(t, kConversation, true),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!  "
            "<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nHow are "
            "you?<|im_end|>\n<|im_start|>assistant\n");
  // Qwen2-Instruct adds "You are a helpful assistant." when there is no system message.
  absl::StatusOr<ChatTemplate> qwen2 = ChatTemplate::FromName("qwen2", "", "<|im_end|>");
  ASSERT_TRUE(qwen2.ok());
  EXPECT_EQ(RenderOrDie(*qwen2, {{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_"
            "end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(RenderOrDie(*qwen2, {{"system", "S"}, {"user", "Hi"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, DeepSeekV3AndR1) {
  const std::string bos = "<｜begin▁of▁sentence｜>";
  ChatTemplate v3(ChatTemplateKind::kDeepSeekV3, bos, "<｜end▁of▁sentence｜>");
  EXPECT_EQ(RenderOrDie(v3, kConversation, true),
            "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi!  <｜Assistant｜>Hello.<｜end▁of▁"
            "sentence｜><｜User｜>How are you?<｜Assistant｜>");
  EXPECT_EQ(RenderOrDie(v3, {{"system", "A"}, {"system", "B"}, {"user", "u"}}, false),
            "<｜begin▁of▁sentence｜>A\n\nB<｜User｜>u");
  ChatTemplate r1(ChatTemplateKind::kDeepSeekR1, bos, "<｜end▁of▁sentence｜>");
  EXPECT_EQ(
      RenderOrDie(r1, {{"user", "q"}, {"assistant", "<think>\nhmm\n</think>\n\nA"}, {"user", "q2"}},
                  true),
      "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜>\n\nA<｜end▁of▁sentence｜><｜User｜>q2<"
      "｜Assistant｜><think>\n");
}

TEST(ChatTemplateTest, Llama2) {
  ChatTemplate t(ChatTemplateKind::kLlama2, "<s>", "</s>");
  // meta-llama/Llama-2-7b-chat-hf: system folded into the first user turn, content.strip().
  EXPECT_EQ(RenderOrDie(t, {{"system", "S"}, {"user", " U1 "}, {"assistant", "A1"}, {"user", "U2"}},
                        true),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST]");
  EXPECT_EQ(RenderOrDie(t, {{"user", "hello"}}, false), "<s>[INST] hello [/INST]");
  absl::StatusOr<std::string> bad = t.Render({{"user", "a"}, {"user", "b"}}, true);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("alternate"));
}

TEST(ChatTemplateTest, Mistral) {
  ChatTemplate t(ChatTemplateKind::kMistral, "<s>", "</s>");
  // Mistral-7B-Instruct-v0.2: bos once, "[INST] " + content + " [/INST]", content + eos.
  EXPECT_EQ(RenderOrDie(t, {{"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}}, true),
            "<s>[INST] U1 [/INST]A1</s>[INST] U2 [/INST]");
  EXPECT_FALSE(t.Render({{"system", "S"}, {"user", "U"}}, true).ok());
}

TEST(ChatTemplateTest, DetectFromPublishedTemplates) {
  struct Case {
    std::string dir;
    ChatTemplateKind kind;
  };
  for (const Case& c :
       {Case{"llama3", ChatTemplateKind::kLlama3}, Case{"qwen3", ChatTemplateKind::kChatML},
        Case{"deepseek_v3", ChatTemplateKind::kDeepSeekV3}}) {
    const std::string dir = testing::NpmTokenizerDir(c.dir);
    ASSERT_FALSE(dir.empty());
    auto tok = Tokenizer::Load(dir);
    ASSERT_TRUE(tok.ok()) << tok.status();
    absl::StatusOr<ChatTemplate> t =
        ChatTemplate::Detect((*tok)->chat_template(), (*tok)->bos_token(), (*tok)->eos_token());
    ASSERT_TRUE(t.ok()) << c.dir << ": " << t.status();
    EXPECT_EQ(t->kind(), c.kind) << c.dir;
  }
  const std::string llama2 =
      "{% if messages[0]['role'] == 'system' %}...{{ bos_token + '[INST] ' + content.strip() + ' "
      "[/INST]' }}...'<<SYS>>\\n' + system_message";
  EXPECT_EQ(ChatTemplate::Detect(llama2, "<s>", "</s>")->kind(), ChatTemplateKind::kLlama2);
  EXPECT_EQ(ChatTemplate::Detect("{{ '[INST] ' + message['content'] + ' [/INST]' }}", "<s>", "</s>")
                ->kind(),
            ChatTemplateKind::kMistral);
  EXPECT_EQ(ChatTemplate::Detect("{{'<｜User｜>' + c}}{{'</think>'}}", "", "")->kind(),
            ChatTemplateKind::kDeepSeekR1);
}

TEST(ChatTemplateTest, ErrorsNameTheFlag) {
  absl::StatusOr<ChatTemplate> none = ChatTemplate::Detect("", "", "");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("--chat-template"));
  absl::StatusOr<ChatTemplate> odd = ChatTemplate::Detect("{{ 'User: ' + m }}", "", "");
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(odd.status().message()), HasSubstr("--chat-template"));
  absl::StatusOr<ChatTemplate> bad_name = ChatTemplate::FromName("vicuna", "", "");
  EXPECT_EQ(bad_name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_name.status().message()), HasSubstr("--chat-template"));
  for (const char* name : {"llama2", "llama3", "chatml", "deepseek-v3", "deepseek-r1", "mistral"}) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName(name, "", "");
    ASSERT_TRUE(t.ok()) << name;
    EXPECT_EQ(ChatTemplateName(t->kind()), name);
  }
}

}  // namespace
}  // namespace shardserve

namespace shardserve {
namespace {

const std::vector<ChatTool> kWeatherTool = {
    {"get_weather", "Weather in a city",
     R"({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})"}};

// Rendered with Qwen3's published template (jinja2, transformers' tojson): a tool call and its
// result in a conversation without a system message.
TEST(ChatTemplateTest, ChatMLToolsFollowQwensTemplate) {
  ChatTemplate t(ChatTemplateKind::kChatML, "", "<|im_end|>");
  EXPECT_EQ(t.tool_call_format(), ToolCallFormat::kHermes);
  std::vector<ChatMessage> m = {{"user", "Weather in Paris?"}};
  ChatMessage call{"assistant", ""};
  call.tool_calls.push_back({"get_weather", R"({"city":"Paris"})"});
  m.push_back(call);
  ChatMessage result{"tool", "sunny, 21C"};
  result.tool_call_id = "c1";
  m.push_back(result);
  auto s = t.Render(m, kWeatherTool, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(
      *s,
      "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the "
      "user query.\n\nYou are provided with function signatures within <tools></tools> XML "
      "tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
      "\"description\": \"Weather in a city\", \"parameters\": {\"type\": \"object\", "
      "\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</"
      "tools>\n\nFor each function call, return a json object with function name and "
      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
      "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_"
      "start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": "
      "\"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_"
      "start|>user\n<tool_response>\nsunny, 21C\n</tool_response><|im_end|>\n<|im_start|>"
      "assistant\n");
  // Qwen2.5's default system text leads the tools block when the conversation has none.
  ChatTemplate qwen(ChatTemplateKind::kChatML, "", "<|im_end|>", "You are Qwen.");
  auto q = qwen.Render({{"user", "x"}}, kWeatherTool, true);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->rfind("<|im_start|>system\nYou are Qwen.\n\n# Tools\n", 0), 0u) << *q;
}

// Llama-3.1's JSON tool calling: tools (json.dumps, indent 4) in the first user message, calls
// as {"name", "parameters"}, results under the ipython role (quoted as JSON strings).
TEST(ChatTemplateTest, Llama3ToolsFollowLlama31Template) {
  ChatTemplate t(ChatTemplateKind::kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(t.tool_call_format(), ToolCallFormat::kLlama3Json);
  const std::vector<ChatTool> tools = {
      {"get_weather", "D", R"({"type":"object","properties":{"city":{"type":"string"}}})"}};
  std::vector<ChatMessage> m = {{"system", "S"}, {"user", "Weather?"}};
  ChatMessage call{"assistant", ""};
  call.tool_calls.push_back({"get_weather", R"({"city":"Oslo"})"});
  m.push_back(call);
  m.push_back({"tool", "cold"});
  auto s = t.Render(m, tools, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(
      *s,
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: "
      "ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul "
      "2024\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following "
      "functions, please respond with a JSON for a function call with its proper arguments "
      "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, "
      "\"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n"
      "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": "
      "\"get_weather\",\n        \"description\": \"D\",\n        \"parameters\": {\n       "
      "     \"type\": \"object\",\n            \"properties\": {\n                \"city\": "
      "{\n                    \"type\": \"string\"\n                }\n            }\n       "
      " }\n    }\n}\n\nWeather?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{"
      "\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}<|eot_id|><|start_"
      "header_id|>ipython<|end_header_id|>\n\n\"cold\"<|eot_id|><|start_header_id|>assistant<"
      "|end_header_id|>\n\n");
}

// DeepSeek-V3: the tools after the system prompt, calls and results between the template's
// markers; after results the answer follows them with no <｜Assistant｜>.
TEST(ChatTemplateTest, DeepSeekV3ToolsFollowItsTemplate) {
  ChatTemplate t(ChatTemplateKind::kDeepSeekV3, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
  EXPECT_EQ(t.tool_call_format(), ToolCallFormat::kDeepSeekV3);
  const std::vector<ChatTool> tools = {{"get_weather", "D", R"({"type":"object"})"}};
  std::vector<ChatMessage> m = {{"system", "S"}, {"user", "Weather?"}};
  ChatMessage call{"assistant", ""};
  call.tool_calls.push_back({"get_weather", R"({"city":"Oslo"})"});
  call.tool_calls.push_back({"get_weather", R"({"city":"Rome"})"});
  m.push_back(call);
  m.push_back({"tool", "cold"});
  m.push_back({"tool", "warm"});
  auto s = t.Render(m, tools, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(
      *s,
      "<｜begin▁of▁sentence｜>S\n\n## Tools\n\nYou can call these functions:\n\n{\"type\":"
      "\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"D\","
      "\"parameters\":{\"type\":\"object\"}}}\n\nTo call functions, write "
      "<｜tool▁calls▁begin｜>, then each call as <｜tool▁call▁begin｜>function<｜tool▁sep｜>"
      "NAME\n```json\nARGUMENTS\n```<｜tool▁call▁end｜> (one per line), then "
      "<｜tool▁calls▁end｜>.<｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁"
      "begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\":\"Oslo\"}\n```<｜tool▁"
      "call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\""
      ":\"Rome\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁"
      "outputs▁begin｜><｜tool▁output▁begin｜>cold<｜tool▁output▁end｜>\n<｜tool▁output▁begin"
      "｜>warm<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
  // The answer after the results, then a new question: the generation prompt is back.
  m.push_back({"assistant", "Cold in Oslo."});
  m.push_back({"user", "Thanks"});
  s = t.Render(m, tools, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(absl::EndsWith(*s,
                             "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>Cold in Oslo.<｜end▁of▁"
                             "sentence｜><｜User｜>Thanks<｜Assistant｜>"))
      << *s;
  // R1 serves no tools.
  ChatTemplate r1(ChatTemplateKind::kDeepSeekR1, "", "");
  EXPECT_FALSE(r1.Render({{"user", "x"}}, tools, true).ok());
}

TEST(ChatTemplateTest, ToolsWithATemplateThatHasNoneAreRefused) {
  ChatTemplate t(ChatTemplateKind::kMistral, "<s>", "</s>");
  auto s = t.Render({{"user", "x"}}, kWeatherTool, true);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("renders no tools"));
}

}  // namespace
}  // namespace shardserve
