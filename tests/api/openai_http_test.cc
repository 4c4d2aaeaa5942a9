// The OpenAI-compatible HTTP API and /metrics against a real local cluster: the `openai` npm
// client's streamed chat equals the gRPC result for the same seed; errors are OpenAI-shaped
// with the right status (405 with Allow for a wrong method); the bearer scheme is
// case-insensitive over HTTP and gRPC; a client that hangs up cancels its sequence; promtool
// accepts the router's and a worker's /metrics and the counters move as the requests predict.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using api_testing::HttpGet;
using api_testing::HttpPost;
using api_testing::MetricValue;
using json = nlohmann::json;

constexpr char kKey[] = "test-key-123";

// "shardserve_stage_step_duration_seconds_count{layers=...}" as the worker spells it.
std::string StepCountSample(const std::string& metrics) {
  const std::string name = "shardserve_stage_step_duration_seconds_count{";
  const size_t at = metrics.find(name);
  if (at == std::string::npos) return "";
  return metrics.substr(at, metrics.find(' ', at) - at);
}

class OpenAiHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    http_port_ = FreePort();
    worker_metrics_port_ = FreePort();
    cluster_ = new Cluster(
        {.model = Stories260K(),
         .stages = 2,
         .worker0_args = {"--metrics-listen", absl::StrCat("127.0.0.1:", worker_metrics_port_)},
         .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http_port_), "--api-key",
                         kKey}});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  static Cluster* cluster_;
  static int http_port_;
  static int worker_metrics_port_;
};
Cluster* OpenAiHttp::cluster_ = nullptr;
int OpenAiHttp::http_port_ = 0;
int OpenAiHttp::worker_metrics_port_ = 0;

TEST_F(OpenAiHttp, OpenAiNpmClientStreamsTheGrpcTextForTheSameSeed) {
  auto modules = api_testing::NodeModules();
  ASSERT_TRUE(modules.ok()) << modules.status();
  auto r = api_testing::Run(absl::StrCat("NODE_PATH='", *modules,
                                         "' node tests/api/openai_chat_stream.js "
                                         "http://127.0.0.1:",
                                         http_port_, "/v1 ", kKey, " 7"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = json::parse(r.output.substr(r.output.rfind('{', r.output.find("\"text\""))));

  v1::GenerateRequest request;
  request.set_max_tokens(48);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(7);
  auto* system = request.mutable_chat()->add_messages();
  system->set_role("system");
  system->set_content("You tell short stories.");
  auto* user = request.mutable_chat()->add_messages();
  user->set_role("user");
  user->set_content("Tell me a story about a cat.");
  auto want = RunCompletion(cluster_->router_address(), request, absl::Seconds(60), nullptr, kKey);
  ASSERT_TRUE(want.ok()) << want.status();

  EXPECT_FALSE(want->text.empty());
  EXPECT_EQ(got["text"], want->text);
  EXPECT_EQ(got["finish_reason"], FinishReasonName(want->finish_reason));
  EXPECT_EQ(got["usage"]["prompt_tokens"], want->usage.prompt_tokens());
  EXPECT_EQ(got["usage"]["completion_tokens"], want->usage.completion_tokens());
  EXPECT_EQ(got["first_role"], "assistant");
  EXPECT_GT(got["chunks"].get<int>(), 2);
  EXPECT_EQ(got["n_status"], 400);
}

// What an `openai` npm client user relies on: logprobs that show token text (" there", not
// "▁there") with offsets into the completion; ids unique per response; the `developer` role;
// a fresh seed per unseeded request, returned so that the request can be replayed; fields the
// server does not apply refused, naming them; and a real `created` in /v1/models.
TEST_F(OpenAiHttp, OpenAiNpmClientSeesFaithfulLogprobsIdsSeedsAndRefusals) {
  auto modules = api_testing::NodeModules();
  ASSERT_TRUE(modules.ok()) << modules.status();
  auto r = api_testing::Run(absl::StrCat(
      "NODE_PATH='", *modules, "' node tests/api/openai_fidelity.js http://127.0.0.1:", http_port_,
      "/v1 ", kKey));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = json::parse(r.output.substr(r.output.rfind("{\"completion\"")));

  const json& c = got["completion"];
  const std::string text = c["text"];
  const json& lp = c["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 12u) << c;
  std::string joined;
  for (size_t i = 0; i < lp["tokens"].size(); ++i) {
    const std::string token = lp["tokens"][i];
    EXPECT_EQ(token.find("\xE2\x96\x81"), std::string::npos) << "a raw piece: " << token;
    EXPECT_EQ(lp["text_offset"][i], joined.size()) << c;  // stories260K's text is ASCII
    EXPECT_EQ(lp["top_logprobs"][i].size(), 3u) << c;
    joined += token;
  }
  EXPECT_EQ(joined, text) << "the tokens' text spells the completion";
  EXPECT_NE(text.find(' '), std::string::npos) << text;

  EXPECT_NE(got["chat_ids"][0], got["chat_ids"][1]);
  for (const json& id : got["chat_ids"]) {
    EXPECT_TRUE(absl::StartsWith(id.get<std::string>(), "chatcmpl-")) << id;
    EXPECT_GE(id.get<std::string>().size(), 9u + 32u) << "128 random bits in hex: " << id;
  }
  EXPECT_FALSE(got["developer"]["text"].get<std::string>().empty()) << got["developer"];

  const json& u = got["unseeded"];
  ASSERT_TRUE(u["first"]["seed"].is_number_unsigned()) << u;
  EXPECT_NE(u["first"]["seed"], u["second"]["seed"]) << u;
  EXPECT_NE(u["first"]["text"], u["second"]["text"]) << "two unseeded samples are different";
  EXPECT_EQ(u["replay"]["seed"], u["first"]["seed"]) << u;
  EXPECT_EQ(u["replay"]["text"], u["first"]["text"]) << "the returned seed replays the answer";

  for (const auto& [name, param] : std::vector<std::pair<std::string, std::string>>{
           {"logprobs_30", "logprobs"},
           {"logit_bias", "logit_bias"},
           {"tools", "tools[0].parameters"},
           {"response_format", "response_format.json_schema.schema"}}) {
    EXPECT_EQ(got["errors"][name]["status"], 400) << name << ": " << got["errors"][name];
    EXPECT_EQ(got["errors"][name]["param"], param) << name << ": " << got["errors"][name];
  }
  ASSERT_EQ(got["models"].size(), 1u);
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  EXPECT_GT(got["models"][0]["created"].get<int64_t>(), now - 3600) << got["models"];
  EXPECT_LE(got["models"][0]["created"].get<int64_t>(), now) << got["models"];
}

// Over gRPC the same: no seed is a fresh one, returned on the first response and replayable.
TEST_F(OpenAiHttp, UnseededGrpcRequestsDifferAndReturnTheirSeed) {
  v1::GenerateRequest request;
  request.set_text("Once upon a time");
  request.set_max_tokens(24);
  request.mutable_sampling()->set_temperature(1.0f);
  auto first_seed = [&](uint64_t* seed, std::string* text) {
    auto stub = cluster_->Stub();
    grpc::ClientContext context;
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kKey));
    auto reader = stub->Generate(&context, request);
    v1::GenerateResponse response;
    int messages = 0;
    while (reader->Read(&response)) {
      if (messages++ == 0) {
        ASSERT_TRUE(response.has_seed());
        *seed = response.seed();
      } else {
        EXPECT_FALSE(response.has_seed()) << "only the first response carries it";
      }
      *text += response.text();
    }
    ASSERT_TRUE(reader->Finish().ok());
  };
  uint64_t seed_a = 0, seed_b = 0, seed_replay = 0;
  std::string a, b, replay;
  first_seed(&seed_a, &a);
  first_seed(&seed_b, &b);
  EXPECT_NE(seed_a, seed_b);
  EXPECT_NE(a, b);
  EXPECT_LE(seed_a, (uint64_t{1} << 53) - 1) << "exact as a JSON number";
  request.mutable_sampling()->set_seed(seed_a);
  first_seed(&seed_replay, &replay);
  EXPECT_EQ(seed_replay, seed_a);
  EXPECT_EQ(replay, a);
}

// A chat that never set max_tokens gets the room left in the context, however long its prompt,
// instead of a 400 about a field it did not send.
TEST_F(OpenAiHttp, ChatWithoutMaxTokensGetsTheRoomLeftInTheContext) {
  auto chat_of = [](int repeats) {
    std::string content;
    for (int i = 0; i < repeats; ++i) content += "The cat sat on the mat. ";
    return json{{"messages", {{{"role", "user"}, {"content", content}}}}, {"temperature", 0}};
  };
  auto usage_of = [&](const json& body) {
    auto r = HttpPost(http_port_, "/v1/chat/completions", body.dump(), kKey);
    EXPECT_EQ(r.status, 200) << r.body;
    return r.status == 200 ? json::parse(r.body)["usage"] : json();
  };
  json one = chat_of(1), two = chat_of(2);
  one["max_tokens"] = 1;
  two["max_tokens"] = 1;
  const int base = usage_of(one)["prompt_tokens"];
  const int per = usage_of(two)["prompt_tokens"].get<int>() - base;
  ASSERT_GT(per, 0);
  const json usage = usage_of(chat_of(1 + (490 - base) / per));
  ASSERT_TRUE(usage.is_object());
  const int prompt = usage["prompt_tokens"];
  EXPECT_GE(prompt, 490 - per);
  EXPECT_LE(prompt, 490);
  EXPECT_GT(usage["completion_tokens"].get<int>(), 0);
  EXPECT_LE(prompt + usage["completion_tokens"].get<int>(), 512) << "within the context";
}

// A keyed router can be benchmarked: the key from $SHARDSERVE_API_KEY (or --api-key).
TEST_F(OpenAiHttp, BenchSendsTheApiKey) {
  const std::string bench =
      absl::StrCat(BinPath("shardserve"), " bench --server ", cluster_->router_address(),
                   " --concurrency 2 --requests 4 --prompt-tokens 8 --max-tokens 4");
  auto keyed = api_testing::Run(absl::StrCat("SHARDSERVE_API_KEY=", kKey, " ", bench, " --json"));
  ASSERT_EQ(keyed.exit_code, 0) << keyed.output;
  json out = json::parse(keyed.output.substr(keyed.output.rfind('{')));
  EXPECT_EQ(out["errors"], 0) << out;
  EXPECT_EQ(out["output_tokens"], 16) << out;
  EXPECT_GT(out["requests_per_s"].get<double>(), 0) << out;
  auto flag = api_testing::Run(absl::StrCat(bench, " --api-key ", kKey));
  ASSERT_EQ(flag.exit_code, 0) << flag.output;
  EXPECT_TRUE(absl::StrContains(flag.output, "requests/s")) << flag.output;
  EXPECT_TRUE(absl::StrContains(flag.output, "concurrency 2")) << flag.output;
  auto keyless = api_testing::Run(bench);
  EXPECT_EQ(keyless.exit_code, 2) << keyless.output;
  EXPECT_TRUE(absl::StrContains(keyless.output, "api key")) << keyless.output;
}

TEST_F(OpenAiHttp, ModelsAndNonStreamedCompletions) {
  auto models = HttpGet(http_port_, "/v1/models", kKey);
  ASSERT_EQ(models.status, 200) << models.body;
  json m = json::parse(models.body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "stories260K");
  EXPECT_EQ(HttpGet(http_port_, "/v1/models/stories260K", kKey).status, 200);

  auto done = HttpPost(http_port_, "/v1/completions",
                       R"({"model":"stories260K","prompt":"Once upon a time","max_tokens":12,
                           "temperature":0,"logprobs":2,"stop":["zzzz"]})",
                       kKey);
  ASSERT_EQ(done.status, 200) << done.body;
  json c = json::parse(done.body);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"]["completion_tokens"], 12);
  EXPECT_EQ(c["choices"][0]["logprobs"]["tokens"].size(), 12u);
  EXPECT_EQ(c["choices"][0]["logprobs"]["top_logprobs"][0].size(), 2u);
  auto ref = RunGenerate(Stories260K(), "Once upon a time", 12, 0.0f, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(c["choices"][0]["text"], ref->text);

  auto chat = HttpPost(http_port_, "/v1/chat/completions",
                       R"({"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,
                           "temperature":0.5,"top_p":0.9,"seed":3,"logprobs":true,
                           "top_logprobs":1})",
                       kKey);
  ASSERT_EQ(chat.status, 200) << chat.body;
  json ch = json::parse(chat.body);
  EXPECT_EQ(ch["object"], "chat.completion");
  EXPECT_EQ(ch["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(ch["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 1u);
}

TEST_F(OpenAiHttp, StreamedCompletionEndsWithUsageAndDone) {
  httplib::Client client("127.0.0.1", http_port_);
  client.set_read_timeout(60, 0);
  auto res = client.Post("/v1/completions", {{"Authorization", std::string("Bearer ") + kKey}},
                         R"({"prompt":"The cat","max_tokens":6,"stream":true,
                             "stream_options":{"include_usage":true}})",
                         "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const std::string& body = res->body;
  ASSERT_GE(body.size(), 14u);
  EXPECT_EQ(body.substr(body.size() - 14), "data: [DONE]\n\n");
  const size_t usage = body.rfind("data: {");
  json last = json::parse(body.substr(usage + 6, body.find("\n\n", usage) - usage - 6));
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_EQ(last["usage"]["completion_tokens"], 6);
}

TEST_F(OpenAiHttp, ErrorsAreOpenAiShaped) {
  struct Case {
    std::string path, body, key;
    int status;
    std::string param;
  };
  const std::vector<Case> cases = {
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}]})", "", 401, ""},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}]})", "wrong", 401, ""},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"n":2})", kKey, 400,
       "n"},
      {"/v1/completions", R"({"prompt":"x","model":"gpt-4"})", kKey, 404, "model"},
      // A model that is not a string is a malformed request, not an unknown model.
      {"/v1/completions", R"({"prompt":"x","model":5})", kKey, 400, "model"},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"model":5})", kKey,
       400, "model"},
      {"/v1/completions", R"({"prompt":"x","temperature":-1})", kKey, 400, "temperature"},
      {"/v1/completions", R"({"prompt":"x","max_tokens":100000})", kKey, 400, ""},
      {"/v1/completions", R"({"prompt":"x","stop":[1]})", kKey, 400, "stop"},
      {"/v1/completions", "{not json", kKey, 400, "body"},
      {"/v1/nothing", "{}", kKey, 404, ""},
  };
  for (const Case& c : cases) {
    auto r = HttpPost(http_port_, c.path, c.body, c.key);
    EXPECT_EQ(r.status, c.status) << c.path << " " << c.body << " -> " << r.body;
    json e = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(e.contains("error")) << r.body;
    EXPECT_TRUE(e["error"]["message"].is_string());
    EXPECT_TRUE(e["error"]["type"].is_string());
    if (!c.param.empty()) {
      EXPECT_EQ(e["error"]["param"], c.param) << r.body;
    }
  }
}

TEST_F(OpenAiHttp, NonStringModelIs400NamingTheField) {
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    auto r =
        HttpPost(http_port_, path,
                 R"({"model":5,"prompt":"x","messages":[{"role":"user","content":"x"}]})", kKey);
    EXPECT_EQ(r.status, 400) << path << " -> " << r.body;
    json e = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(e.contains("error")) << r.body;
    EXPECT_EQ(e["error"]["param"], "model") << r.body;
    EXPECT_EQ(e["error"]["type"], "invalid_request_error") << r.body;
    EXPECT_EQ(e["error"]["code"], nullptr) << r.body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find("must be a string"), std::string::npos)
        << r.body;
  }
  // An unknown model is still 404 model_not_found.
  auto r = HttpPost(http_port_, "/v1/completions", R"({"model":"gpt-4","prompt":"x"})", kKey);
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "model_not_found") << r.body;
}

// Sends `request` (a whole HTTP/1.1 request) on a fresh connection and returns what comes back
// until the server closes it or 10 s pass.
std::string RawHttp(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    timeval timeout{.tv_sec = 10, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

TEST_F(OpenAiHttp, WrongMethodOnAKnownRouteIs405WithAllow) {
  struct Case {
    std::string method, path, body, allow;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/models", "", "GET, HEAD"},
      {"POST", "/v1/models", "{}", "GET, HEAD"},
      {"DELETE", "/v1/models/stories260K", "", "GET, HEAD"},
      {"PATCH", "/v1/completions", R"({"prompt":"x"})", "POST"},
      {"PUT", "/v1/chat/completions", "{}", "POST"},
      {"GET", "/v1/completions", "", "POST"},
      {"GET", "/v1/chat/completions", "", "POST"},
      {"OPTIONS", "/v1/completions", "", "POST"},
      {"POST", "/health", "{}", "GET, HEAD"},
      {"PUT", "/metrics", "", "GET, HEAD"},
  };
  httplib::Client client("127.0.0.1", http_port_);
  client.set_keep_alive(true);
  client.set_read_timeout(10, 0);
  for (const Case& c : cases) {
    httplib::Request req;
    req.method = c.method;
    req.path = c.path;
    req.body = c.body;
    req.set_header("Authorization", std::string("Bearer ") + kKey);
    if (!c.body.empty()) req.set_header("Content-Type", "application/json");
    auto res = client.send(req);
    ASSERT_TRUE(res) << c.method << " " << c.path << ": " << httplib::to_string(res.error());
    EXPECT_EQ(res->status, 405) << c.method << " " << c.path << " -> " << res->body;
    EXPECT_EQ(res->get_header_value("Allow"), c.allow) << c.method << " " << c.path;
    json e = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(e.contains("error")) << c.method << " " << c.path << " -> " << res->body;
    EXPECT_EQ(e["error"]["type"], "invalid_request_error") << res->body;
    EXPECT_EQ(e["error"]["code"], "method_not_allowed") << res->body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(c.method), std::string::npos)
        << res->body;
  }
  // The keep-alive connection is still good for the right method.
  auto models = client.Get("/v1/models", {{"Authorization", std::string("Bearer ") + kKey}});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200) << models->body;
  // A POST with neither Content-Length nor a chunked body (curl -X POST) is answered at once,
  // not after a read timeout.
  const absl::Time start = absl::Now();
  const std::string raw =
      RawHttp(http_port_, "POST /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_EQ(raw.substr(0, 12), "HTTP/1.1 405") << raw;
  EXPECT_NE(raw.find("Allow: GET, HEAD\r\n"), std::string::npos) << raw;
  EXPECT_NE(raw.find("\"method_not_allowed\""), std::string::npos) << raw;
  // Unknown paths stay 404.
  EXPECT_EQ(HttpGet(http_port_, "/v1/nothing", kKey).status, 404);
}

TEST_F(OpenAiHttp, BearerSchemeIsCaseInsensitiveOverHttpAndGrpc) {
  httplib::Client client("127.0.0.1", http_port_);
  for (const std::string scheme : {"Bearer", "bearer", "BEARER", "bEaReR"}) {
    auto res = client.Get("/v1/models", {{"authorization", scheme + " " + kKey}});
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << scheme << ": " << res->body;
    auto stub = cluster_->Stub();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.AddMetadata("authorization", scheme + " " + kKey);
    v1::ListModelsResponse models;
    grpc::Status s = stub->ListModels(&context, v1::ListModelsRequest(), &models);
    EXPECT_TRUE(s.ok()) << scheme << ": " << s.error_message();
  }
  // Another scheme, or a key that differs from the right one (even as a prefix or with more
  // characters), is refused on both.
  for (const std::string& header : {std::string("Basic ") + kKey, std::string("Bearer") + kKey,
                                    std::string("bearer ") + kKey + "4",
                                    std::string("bearer test-key-12"), std::string("bearer")}) {
    auto res = client.Get("/v1/models", {{"Authorization", header}});
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401) << header << ": " << res->body;
    auto stub = cluster_->Stub();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.AddMetadata("authorization", header);
    v1::ListModelsResponse models;
    EXPECT_EQ(stub->ListModels(&context, v1::ListModelsRequest(), &models).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << header;
  }
}

TEST_F(OpenAiHttp, PromtoolAcceptsMetricsAndCountersMove) {
  const std::string before = HttpGet(http_port_, "/metrics").body;
  const std::string worker_before = HttpGet(worker_metrics_port_, "/metrics").body;
  auto check = api_testing::Promtool(before);
  EXPECT_EQ(check.exit_code, 0) << check.output << "\n" << before;
  check = api_testing::Promtool(worker_before);
  EXPECT_EQ(check.exit_code, 0) << check.output << "\n" << worker_before;

  // Three completions of 5 tokens each that cannot stop early, one over gRPC.
  int prompt_tokens = 0;
  for (int i = 0; i < 2; ++i) {
    auto r = HttpPost(http_port_, "/v1/completions",
                      R"({"prompt":"Lily saw a bird","max_tokens":5,"ignore_eos":true})", kKey);
    ASSERT_EQ(r.status, 200) << r.body;
    prompt_tokens += json::parse(r.body)["usage"]["prompt_tokens"].get<int>();
  }
  v1::GenerateRequest request = TextRequest("Lily saw a bird", 5, 0.0f, 0);
  request.set_ignore_eos(true);
  auto grpc = RunCompletion(cluster_->router_address(), request, absl::Seconds(60), nullptr, kKey);
  ASSERT_TRUE(grpc.ok()) << grpc.status();
  prompt_tokens += grpc->usage.prompt_tokens();

  const std::string after = HttpGet(http_port_, "/metrics").body;
  auto delta = [&](const std::string& sample) {
    return MetricValue(after, sample) - MetricValue(before, sample);
  };
  EXPECT_EQ(delta("shardserve_generation_tokens_total"), 15);
  EXPECT_EQ(delta("shardserve_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(delta("shardserve_request_success_total{finished_reason=\"length\"}"), 3);
  EXPECT_EQ(delta("shardserve_time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(delta("shardserve_e2e_request_latency_seconds_count"), 3);
  EXPECT_EQ(delta("shardserve_inter_token_latency_seconds_count"), 12);
  EXPECT_EQ(MetricValue(after, "shardserve_num_requests_running{pipeline=\"0\"}"), 0);
  EXPECT_GT(MetricValue(after, "shardserve_kv_cache_blocks_capacity{pipeline=\"0\"}"), 0);
  check = api_testing::Promtool(after);
  EXPECT_EQ(check.exit_code, 0) << check.output;

  const std::string worker_after = HttpGet(worker_metrics_port_, "/metrics").body;
  check = api_testing::Promtool(worker_after);
  EXPECT_EQ(check.exit_code, 0) << check.output << "\n" << worker_after;
  // Every token of the three requests is one step plan on stage 0 at least (prompts are
  // prefilled in one chunk each; decode steps may batch but these ran one at a time).
  const std::string steps = StepCountSample(worker_after);
  ASSERT_FALSE(steps.empty()) << worker_after;
  EXPECT_GE(MetricValue(worker_after, steps) - MetricValue(worker_before, steps), 15)
      << worker_after;
  EXPECT_GT(MetricValue(worker_after, "shardserve_activation_bytes_total{direction=\"send\"}"), 0)
      << worker_after;
}

// What a Grafana dashboard built for vLLM relies on: every router sample and every sample of a
// worker's loaded shard carries model_name, the name /v1/models serves; the router and the
// workers never export one family name with two meanings; and a stage's layers are spelt as the
// router's placement and --layers spell them (first-last).
TEST_F(OpenAiHttp, MetricsNameTheModelAndSpellLayersOneWay) {
  auto models = HttpGet(http_port_, "/v1/models", kKey);
  ASSERT_EQ(models.status, 200) << models.body;
  const std::string served = json::parse(models.body)["data"][0]["id"];
  ASSERT_FALSE(served.empty());

  const std::string router = HttpGet(http_port_, "/metrics").body;
  const std::string worker = HttpGet(worker_metrics_port_, "/metrics").body;
  auto router_samples = api_testing::ParseMetrics(router);
  auto worker_samples = api_testing::ParseMetrics(worker);
  ASSERT_GT(router_samples.size(), 20u) << router;
  ASSERT_GT(worker_samples.size(), 10u) << worker;
  for (const auto& s : router_samples) {
    EXPECT_EQ(s.labels.count("model_name") ? s.labels.at("model_name") : "<none>", served)
        << s.name;
  }

  auto stats = WorkerStats(cluster_->worker_addresses()[0]);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_TRUE(stats->loaded());
  const std::string layers = absl::StrCat(stats->layer_begin(), "-", stats->layer_end() - 1);
  int shard_samples = 0;
  for (const auto& s : worker_samples) {
    if (!absl::StartsWith(s.name, "shardserve_stage_") &&
        !absl::StartsWith(s.name, "shardserve_activation_")) {
      continue;
    }
    ++shard_samples;
    EXPECT_EQ(s.labels.count("model_name") ? s.labels.at("model_name") : "<none>", served)
        << s.name;
    EXPECT_EQ(s.labels.count("layers") ? s.labels.at("layers") : "<none>", layers) << s.name;
  }
  EXPECT_GT(shard_samples, 10);
  EXPECT_GT(MetricValue(worker, "shardserve_stage_kv_cache_blocks_capacity"), 0) << worker;

  // No family in both expositions: a name means one thing, with one set of labels.
  auto families = [](const std::string& text) {
    std::set<std::string> out;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::StartsWith(line, "# TYPE ")) {
        out.insert(std::string(line.substr(7, line.find(' ', 7) - 7)));
      }
    }
    return out;
  };
  const std::set<std::string> router_families = families(router);
  ASSERT_TRUE(router_families.count("shardserve_kv_cache_blocks_used")) << router;
  for (const std::string& f : families(worker)) {
    EXPECT_FALSE(router_families.count(f)) << f << " is exported by the router and a worker";
  }

  // The router's log shows the placement with the same spelling.
  std::ifstream log(cluster_->router_log());
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_TRUE(absl::StrContains(text.str(), absl::StrCat("layers ", layers, ",")))
      << "router log does not show layers " << layers << ":\n"
      << text.str();
}

// deploy/grafana/shardserve.json queries only metrics a live router or worker exports: every
// shardserve_* name in its queries is a sample or a family of this cluster's /metrics.
TEST_F(OpenAiHttp, GrafanaDashboardQueriesOnlyMetricsThatExist) {
  std::ifstream in(api_testing::SourcePath("deploy/grafana/shardserve.json"));
  ASSERT_TRUE(in.good());
  const json dashboard = json::parse(in);
  std::vector<std::string> exprs;
  std::function<void(const json&)> collect = [&](const json& j) {
    if (j.is_object()) {
      for (const auto& [key, value] : j.items()) {
        if (key == "expr" && value.is_string()) exprs.push_back(value);
        collect(value);
      }
    } else if (j.is_array()) {
      for (const json& v : j) collect(v);
    }
  };
  collect(dashboard["panels"]);
  ASSERT_GE(exprs.size(), 20u);

  std::set<std::string> exported;
  for (const std::string& text :
       {HttpGet(http_port_, "/metrics").body, HttpGet(worker_metrics_port_, "/metrics").body}) {
    for (const auto& s : api_testing::ParseMetrics(text)) exported.insert(s.name);
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::StartsWith(line, "# TYPE ")) {
        exported.insert(std::string(line.substr(7, line.find(' ', 7) - 7)));
      }
    }
  }
  std::set<std::string> queried;
  const std::regex name("shardserve_[a-z0-9_]+");
  for (const std::string& e : exprs) {
    for (auto it = std::sregex_iterator(e.begin(), e.end(), name); it != std::sregex_iterator();
         ++it) {
      queried.insert(it->str());
    }
  }
  EXPECT_GE(queried.size(), 25u);
  for (const std::string& q : queried) {
    EXPECT_TRUE(exported.count(q)) << q << " is queried by the dashboard but no process exports it";
  }
}

TEST_F(OpenAiHttp, HealthEndpoint) { EXPECT_EQ(HttpGet(http_port_, "/health").status, 200); }

// A slow cluster (every activation send waits 30 ms) so that a long request is still running
// when its client hangs up.
TEST(OpenAiHttpCancel, ClientThatHangsUpCancelsItsSequence) {
  const int port = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .worker0_args = {"--fault-send-delay-ms", "30"},
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", port)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  {
    httplib::Client client("127.0.0.1", port);
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = R"({"prompt":"Once","max_tokens":400,"ignore_eos":true,"stream":true})";
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      return ++chunks < 3;  // hang up after a few tokens
    };
    client.send(req);
    EXPECT_GE(chunks, 3);
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  std::string metrics;
  while (absl::Now() < give_up) {
    metrics = HttpGet(port, "/metrics").body;
    if (MetricValue(metrics, "shardserve_request_success_total{finished_reason=\"abort\"}") == 1 &&
        MetricValue(metrics, "shardserve_num_requests_running{pipeline=\"0\"}") == 0 &&
        MetricValue(metrics, "shardserve_kv_cache_blocks_used{pipeline=\"0\"}") == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(MetricValue(metrics, "shardserve_request_success_total{finished_reason=\"abort\"}"), 1)
      << metrics;
  EXPECT_EQ(MetricValue(metrics, "shardserve_kv_cache_blocks_used{pipeline=\"0\"}"), 0);
  // Far fewer than 400 tokens were generated.
  EXPECT_LT(MetricValue(metrics, "shardserve_generation_tokens_total"), 200);
}

TEST(OpenAiHttpUnavailable, NoReadyPipelineIs503) {
  const int port = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", port)},
                   .worker_addresses = {absl::StrCat("127.0.0.1:", FreePort())}});
  api_testing::HttpResult health;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up && health.status == 0) {
    health = HttpGet(port, "/health");
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(health.status, 503);
  auto r = HttpPost(port, "/v1/completions", R"({"prompt":"x"})");
  EXPECT_EQ(r.status, 503) << r.body;
  json e = json::parse(r.body, nullptr, false);
  EXPECT_EQ(e["error"]["type"], "service_unavailable_error") << r.body;
}

}  // namespace
}  // namespace shardserve::e2e
