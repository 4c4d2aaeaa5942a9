// The OpenAI request parser answers every malformed body with INVALID_ARGUMENT naming the
// parameter; a field of the wrong JSON type never escapes as an exception (the HTTP port is open
// to anyone who can reach it).
#include <string>

#include "gtest/gtest.h"
#include "router/http_openai.h"

namespace shardserve {
namespace {

TEST(OpenAiRequest, WrongTypesAreInvalidArgumentNamingTheParameter) {
  struct Case {
    std::string body;
    std::string param;
  };
  const Case cases[] = {
      {R"({"messages": [{"role": "user", "content": [{"type": 3, "text": "b"}]}]})",
       "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]})",
       "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [3]}]})", "messages[0].content"},
      {R"({"messages": [{"role": 3, "content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": 7}]})", "tools[0]"},
      {R"({"messages": [{"role": "user", "content": "x"}],
           "tools": [{"type": "function", "function": {"name": 5}}]})",
       "tools[0].function.name"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f",
           "arguments": {}}}]}]})",
       "messages[0].tool_calls[0].function.arguments"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": 4})", "tool_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": [1]})", "stop"},
      {R"({"messages": "x"})", "messages"},
  };
  for (const Case& c : cases) {
    auto r = ParseOpenAiRequest(OpenAiEndpoint::kChat, c.body);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_EQ(r.status().message().substr(0, c.param.size() + 1), c.param + ":")
        << r.status() << " for " << c.body;
  }
}

}  // namespace
}  // namespace shardserve
