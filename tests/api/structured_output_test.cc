// Structured outputs against real 2-stage clusters with the `openai` npm client: for 30 JSON
// schemas, every json_schema output parses and validates with ajv at temperature 0 and at 1.0
// with 5 seeds, and json_object outputs parse, on stories260K (chat) and on a random-weight
// synthetic model (completions), where only the constraint makes the output JSON. Bad schemas
// and grammars get 400 naming the spot; gRPC takes a GBNF grammar.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using api_testing::HttpPost;
using json = nlohmann::json;

constexpr char kKey[] = "structured-key";

struct Fixture {
  Cluster* cluster = nullptr;
  int http = 0;
};

Fixture Start(const std::string& model) {
  Fixture f;
  f.http = FreePort();
  f.cluster = new Cluster(
      {.model = model,
       .stages = 2,
       .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", f.http), "--api-key", kKey}});
  EXPECT_TRUE(f.cluster->WaitServing(absl::Seconds(60)).ok());
  return f;
}

// Runs tests/structured/structured_output.js; its summary line.
json RunSchemas(int http, const std::string& endpoint) {
  auto modules = api_testing::StructuredNodeModules();
  EXPECT_TRUE(modules.ok()) << modules.status();
  if (!modules.ok()) return json();
  auto r = api_testing::Run(absl::StrCat("NODE_PATH='", *modules,
                                         "' node tests/structured/structured_output.js "
                                         "http://127.0.0.1:",
                                         http, "/v1 ", kKey, " 160 ", endpoint));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const size_t at = r.output.rfind("{\"model\"");
  if (at == std::string::npos) {
    ADD_FAILURE() << r.output;
    return json();
  }
  return json::parse(r.output.substr(at), nullptr, false);
}

void ExpectAllValid(const json& got) {
  ASSERT_TRUE(got.is_object()) << got;
  std::cout << "finish reasons " << got["finishes"] << "; sampled outputs:\n"
            << got["sample"].dump(1) << "\n";
  EXPECT_EQ(got["schemas"], 30);
  EXPECT_EQ(got["runs"], 30 * 6 + 6);
  EXPECT_EQ(got["passed"], got["runs"]) << got["failures"].dump(1);
}

class StructuredStories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { f_ = Start(Stories260K()); }
  static void TearDownTestSuite() {
    delete f_.cluster;
    f_ = {};
  }
  static Fixture f_;
};
Fixture StructuredStories::f_;

TEST_F(StructuredStories, EverySchemaOutputValidatesWithAjv) {
  ExpectAllValid(RunSchemas(f_.http, "chat"));
}

TEST_F(StructuredStories, BadSchemasAndGrammarsAre400NamingTheSpot) {
  auto post = [&](const json& format) {
    json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                 {"max_tokens", 50},
                 {"response_format", format}};
    return HttpPost(f_.http, "/v1/chat/completions", body.dump(), kKey);
  };
  auto unsupported =
      post({{"type", "json_schema"},
            {"json_schema",
             {{"name", "n"},
              {"schema",
               {{"type", "object"},
                {"properties", {{"age", {{"type", "integer"}, {"minimum", 0}}}}}}}}}});
  EXPECT_EQ(unsupported.status, 400) << unsupported.body;
  EXPECT_NE(unsupported.body.find("#/properties/age/minimum"), std::string::npos)
      << unsupported.body;
  auto grammar = post({{"type", "grammar"}, {"grammar", "root ::= item\n"}});
  EXPECT_EQ(grammar.status, 400) << grammar.body;
  EXPECT_NE(grammar.body.find("undefined rule 'item'"), std::string::npos) << grammar.body;
  auto tight =
      post({{"type", "json_schema"},
            {"json_schema",
             {{"name", "n"},
              {"schema",
               {{"type", "object"},
                {"properties",
                 {{"a_long_property_name", {{"type", "string"}}},
                  {"another_long_one", {{"type", "string"}}},
                  {"and_a_third_long_name", {{"type", "string"}}}}},
                {"required",
                 {"a_long_property_name", "another_long_one", "and_a_third_long_name"}}}}}}});
  EXPECT_EQ(tight.status, 400) << tight.body;
  EXPECT_NE(tight.body.find("max_tokens: 50 cannot hold the shortest output"), std::string::npos)
      << tight.body;
  auto type = post({{"type", "xml"}});
  EXPECT_EQ(type.status, 400) << type.body;
}

// Over gRPC: a GBNF grammar; the output is a sentence of it and ends when nothing may follow.
TEST_F(StructuredStories, GrpcGrammarOutputIsASentence) {
  v1::GenerateRequest request;
  request.set_text("Once upon a time");
  request.set_max_tokens(64);
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_seed(9);
  request.mutable_response_format()->set_grammar(
      "root ::= \" \" animal \" and \" animal \".\"\nanimal ::= \"cat\" | \"dog\" | \"bird\"\n");
  auto got = RunCompletion(f_.cluster->router_address(), request, absl::Seconds(60), nullptr, kKey);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::string t = got->text;
  bool sentence = false;
  for (const char* a : {"cat", "dog", "bird"}) {
    for (const char* b : {"cat", "dog", "bird"}) {
      sentence = sentence || t == absl::StrCat(" ", a, " and ", b, ".");
    }
  }
  EXPECT_TRUE(sentence) << t;
  EXPECT_EQ(got->finish_reason, v1::FINISH_REASON_STOP);
}

// A random-weight tiny Llama with a 4096-token context (tool definitions make long prompts),
// written once per build tree.
std::string LongContextModel() {
  namespace fs = std::filesystem;
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/test-models/tiny-llama-4k");
  if (fs::exists(dir + "/config.json")) return dir;
  json config = json::parse(std::ifstream(SyntheticModel("tiny-llama") + "/config.json"));
  config["max_position_embeddings"] = 4096;
  const std::string tmp = dir + ".tmp" + std::to_string(getpid());
  fs::create_directories(tmp);
  std::ofstream(tmp + "/in-config.json") << config.dump();
  const std::string cmd = absl::StrCat(BinPath("shardserve"), " synth --config ", tmp,
                                       "/in-config.json --seed 7 --out ", tmp, " 2>&1");
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) fs::remove_all(tmp, ec);
  return dir;
}

// Tool calls with the openai client on a random-weight model (the grammar makes the calls),
// rendered with each template that serves
// tools: call (required or named; arguments validated with ajv), tool result, answer; streamed
// and not.
class ToolCalls : public ::testing::TestWithParam<std::string> {};

TEST_P(ToolCalls, RoundTripWithTheOpenAiClient) {
  const int http = FreePort();
  Cluster cluster({.model = LongContextModel(),
                   .stages = 2,
                   .router_args = {"--chat-template", GetParam(), "--http-listen",
                                   absl::StrCat("127.0.0.1:", http), "--api-key", kKey}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto modules = api_testing::StructuredNodeModules();
  ASSERT_TRUE(modules.ok()) << modules.status();
  auto r = api_testing::Run(
      absl::StrCat("NODE_PATH='", *modules,
                   "' node tests/structured/tool_calls.js http://127.0.0.1:", http, "/v1 ", kKey));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t at = r.output.rfind("{\"runs\"");
  ASSERT_NE(at, std::string::npos) << r.output;
  const json got = json::parse(r.output.substr(at), nullptr, false);
  std::cout << GetParam() << ": " << got["sample"].dump() << "\n";
  EXPECT_EQ(got["runs"], 13);
  EXPECT_EQ(got["passed"], got["runs"]) << got["failures"].dump(1);
}

INSTANTIATE_TEST_SUITE_P(Templates, ToolCalls, ::testing::Values("qwen2", "llama3", "deepseek-v3"));

class StructuredRandom : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { f_ = Start(SyntheticModel("tiny-llama")); }
  static void TearDownTestSuite() {
    delete f_.cluster;
    f_ = {};
  }
  static Fixture f_;
};
Fixture StructuredRandom::f_;

TEST_F(StructuredRandom, EverySchemaOutputValidatesWithAjv) {
  ExpectAllValid(RunSchemas(f_.http, "completions"));
}

}  // namespace
}  // namespace shardserve::e2e
