#include "cli/bench.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/complete.h"
#include "common/cli_flags.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "shardserve/v1/inference.grpc.pb.h"

namespace shardserve {
namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct BenchConfig {
  std::string server;
  int concurrency = 8, prompt_tokens = 64, max_tokens = 64, requests = 0;
  float temperature = 0.0f;
  double timeout_s = 600;
  bool json = false;
  std::string scenario = "random";
  int turns = 4, user_tokens = 32;
  // host:port of each worker's /metrics, in stage order: busy fractions and pipeline
  // efficiency.
  std::string worker_metrics;
  std::string api_key;  // --api-key, else $SHARDSERVE_API_KEY
  TlsFiles tls;
  std::string response_format_flag;  // --response-format as given
  v1::ResponseFormat response_format;
  bool chat() const { return scenario == "chat"; }
  int total_requests() const { return chat() ? requests * turns : requests; }
};

void AddBenchFlags(CLI::App& app, BenchConfig* c) {
  app.add_option("--server", c->server, "router address host:port")->required();
  app.add_option("--concurrency", c->concurrency, "streams in flight")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--prompt-tokens", c->prompt_tokens, "prompt length in tokens")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-tokens", c->max_tokens, "tokens generated per request")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--requests", c->requests,
                 "requests in total; chat: conversations (0: 2 x concurrency)")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--temperature", c->temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--timeout-s", c->timeout_s, "deadline per request")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  app.add_option("--scenario", c->scenario,
                 "random: independent random prompts; chat: multi-turn conversations, each turn "
                 "resending the conversation so far plus --user-tokens new tokens")
      ->check(CLI::IsMember({"random", "chat"}))
      ->capture_default_str();
  app.add_option("--turns", c->turns, "chat: turns per conversation")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--user-tokens", c->user_tokens, "chat: new tokens per later turn")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_flag("--json", c->json, "print one JSON object");
  app.add_option("--api-key", c->api_key,
                 "sent as authorization: Bearer KEY (default: $SHARDSERVE_API_KEY)");
  app.add_option("--worker-metrics", c->worker_metrics,
                 "host:port,... of the workers' /metrics (shardserve-worker --metrics-listen), in "
                 "stage order: report each stage's busy fraction and the pipeline efficiency");
  app.add_option("--response-format", c->response_format_flag,
                 "constrain every output (structured outputs): json_object, json_schema:FILE (a "
                 "JSON Schema) or grammar:FILE (GBNF)");
  AddClientTlsFlags(app, &c->tls);
}

// --response-format into c->response_format; false (after saying why) when it is unusable.
bool ParseResponseFormat(BenchConfig* c) {
  const std::string& f = c->response_format_flag;
  if (f.empty()) return true;
  if (f == "json_object") {
    c->response_format.mutable_json_object();
    return true;
  }
  for (const char* kind : {"json_schema:", "grammar:"}) {
    if (!absl::StartsWith(f, kind)) continue;
    const std::string path = f.substr(std::string(kind).size());
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) {
      std::fprintf(stderr, "error: --response-format: cannot read %s\n", path.c_str());
      return false;
    }
    if (std::string(kind) == "grammar:") {
      c->response_format.set_grammar(text.str());
    } else {
      c->response_format.mutable_json_schema()->set_schema(text.str());
    }
    return true;
  }
  std::fprintf(stderr,
               "error: --response-format: '%s' is not json_object, json_schema:FILE or "
               "grammar:FILE\n",
               f.c_str());
  return false;
}

// What every client thread adds to, under mu.
struct BenchResults {
  std::mutex mu;
  std::vector<double> ttft_ms, itl_ms, ttft_first_ms, ttft_later_ms;
  std::vector<std::string> error_messages;
  int64_t tokens = 0;
  int errors = 0;
  int done = 0;
};

// One streamed request: its TTFT (-1 when no token came), inter-token intervals and tokens,
// appended to `conversation`.
struct StreamTiming {
  double ttft = -1;
  std::vector<double> itl;
  int64_t tokens = 0;
  grpc::Status status;
};

// Sends the key, when there is one, as the router's --api-key expects it.
void Authorize(const BenchConfig& c, grpc::ClientContext* context) {
  if (!c.api_key.empty()) context->AddMetadata("authorization", "Bearer " + c.api_key);
}

StreamTiming RunStream(const BenchConfig& c, v1::InferenceService::Stub& stub,
                       const v1::GenerateRequest& req, std::vector<int32_t>* conversation) {
  StreamTiming out;
  grpc::ClientContext rpc;
  rpc.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(c.timeout_s)));
  Authorize(c, &rpc);
  const auto sent = Clock::now();
  auto last = sent;
  auto reader = stub.Generate(&rpc, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    const int k = resp.token_ids_size();
    if (k == 0) continue;
    const auto now = Clock::now();
    if (out.ttft < 0) {
      out.ttft = std::chrono::duration<double, std::milli>(now - sent).count();
      for (int i = 1; i < k; ++i) out.itl.push_back(0);
    } else {
      // Tokens that arrive together share the interval.
      const double dt = std::chrono::duration<double, std::milli>(now - last).count() / k;
      for (int i = 0; i < k; ++i) out.itl.push_back(dt);
    }
    last = now;
    out.tokens += k;
    conversation->insert(conversation->end(), resp.token_ids().begin(), resp.token_ids().end());
  }
  out.status = reader->Finish();
  return out;
}

// One client thread: takes request numbers from `next` until all are taken.
void RunClient(const BenchConfig& c, const std::shared_ptr<grpc::Channel>& channel, int32_t vocab,
               int t, std::atomic<int>* next, BenchResults* results) {
  const bool tty = isatty(STDERR_FILENO);  // progress on a terminal only
  auto stub = v1::InferenceService::NewStub(channel);
  std::mt19937 rng(1234 + t);
  std::uniform_int_distribution<int32_t> id(3, std::max(3, vocab - 1));
  while (true) {
    const int n = (*next)++;
    if (n >= c.requests) break;
    // A conversation (chat) or one request: each turn sends everything so far.
    std::vector<int32_t> conversation;
    for (int i = 0; i < c.prompt_tokens; ++i) conversation.push_back(id(rng));
    for (int turn = 0; turn < (c.chat() ? c.turns : 1); ++turn) {
      if (turn > 0) {
        for (int i = 0; i < c.user_tokens; ++i) conversation.push_back(id(rng));
      }
      v1::GenerateRequest req;
      req.set_request_id("bench-" + std::to_string(n) + "-" + std::to_string(turn));
      req.mutable_token_ids()->mutable_ids()->Add(conversation.begin(), conversation.end());
      req.set_max_tokens(c.max_tokens);
      req.set_ignore_eos(true);
      req.mutable_sampling()->set_temperature(c.temperature);
      req.mutable_sampling()->set_seed(n);
      if (!c.response_format_flag.empty()) *req.mutable_response_format() = c.response_format;
      StreamTiming timing = RunStream(c, *stub, req, &conversation);
      std::lock_guard<std::mutex> lock(results->mu);
      if (!timing.status.ok()) {
        ++results->errors;
        if (results->error_messages.size() < 5) {
          results->error_messages.push_back(timing.status.error_message());
        }
        break;  // the conversation cannot go on
      }
      results->tokens += timing.tokens;
      if (tty) {
        std::fprintf(stderr, "\rbench: %d/%d requests", ++results->done, c.total_requests());
      }
      if (timing.ttft >= 0) {
        results->ttft_ms.push_back(timing.ttft);
        (turn == 0 ? results->ttft_first_ms : results->ttft_later_ms).push_back(timing.ttft);
      }
      results->itl_ms.insert(results->itl_ms.end(), timing.itl.begin(), timing.itl.end());
    }
  }
}

nlohmann::json Summary(const BenchConfig& c, const BenchResults& r, double seconds) {
  nlohmann::json out;
  out["server"] = c.server;
  out["concurrency"] = c.concurrency;
  out["prompt_tokens"] = c.prompt_tokens;
  out["max_tokens"] = c.max_tokens;
  out["scenario"] = c.scenario;
  out["requests"] = c.total_requests();
  if (c.chat()) {
    out["conversations"] = c.requests;
    out["turns"] = c.turns;
    out["user_tokens"] = c.user_tokens;
    out["ttft_ms_p50_first_turn"] = Percentile(r.ttft_first_ms, 0.5);
    out["ttft_ms_p50_later_turns"] = Percentile(r.ttft_later_ms, 0.5);
    out["ttft_ms_p99_later_turns"] = Percentile(r.ttft_later_ms, 0.99);
  }
  out["errors"] = r.errors;
  out["seconds"] = seconds;
  out["output_tokens"] = r.tokens;
  out["throughput_tokens_per_s"] = seconds > 0 ? r.tokens / seconds : 0.0;
  out["concurrency"] = c.concurrency;
  out["temperature"] = c.temperature;
  if (!c.response_format_flag.empty()) out["response_format"] = c.response_format_flag;
  out["requests_per_s"] = seconds > 0 ? (c.total_requests() - r.errors) / seconds : 0.0;
  out["ttft_ms_p50"] = Percentile(r.ttft_ms, 0.5);
  out["ttft_ms_p99"] = Percentile(r.ttft_ms, 0.99);
  out["itl_ms_p50"] = Percentile(r.itl_ms, 0.5);
  out["itl_ms_p99"] = Percentile(r.itl_ms, 0.99);
  out["error_messages"] = r.error_messages;
  return out;
}

// Each worker's shardserve_stage_busy_seconds_total (summed over its label sets), in order;
// an error names the worker that could not be read.
absl::StatusOr<std::vector<double>> ScrapeBusy(const std::vector<std::string>& workers) {
  std::vector<double> busy;
  for (const std::string& w : workers) {
    httplib::Client client("http://" + w);
    client.set_connection_timeout(5);
    client.set_read_timeout(10);
    auto res = client.Get("/metrics");
    if (!res || res->status != 200) {
      return absl::UnavailableError(absl::StrCat("--worker-metrics ", w, ": cannot read /metrics"));
    }
    double total = 0;
    bool found = false;
    for (absl::string_view line : absl::StrSplit(res->body, '\n')) {
      if (!absl::StartsWith(line, "shardserve_stage_busy_seconds_total")) continue;
      double v = 0;
      const size_t space = line.rfind(' ');
      if (space != absl::string_view::npos && absl::SimpleAtod(line.substr(space + 1), &v)) {
        total += v;
        found = true;
      }
    }
    if (!found) {
      return absl::NotFoundError(
          absl::StrCat("--worker-metrics ", w, ": no shardserve_stage_busy_seconds_total"));
    }
    busy.push_back(total);
  }
  return busy;
}

// busy_fraction per stage and the pipeline efficiency, sum(busy) / (stages x wall).
void AddBusy(const std::vector<double>& before, const std::vector<double>& after, double seconds,
             nlohmann::json* out) {
  nlohmann::json fractions = nlohmann::json::array();
  double sum = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    const double f = seconds > 0 ? (after[i] - before[i]) / seconds : 0.0;
    fractions.push_back(f);
    sum += f;
  }
  (*out)["stage_busy_fraction"] = fractions;
  (*out)["pipeline_efficiency"] = before.empty() ? 0.0 : sum / before.size();
}

void PrintHuman(const BenchConfig& c, const nlohmann::json& out) {
  std::printf("%s: %s, concurrency %d, prompt %d tokens, max_tokens %d, temperature %g\n",
              c.server.c_str(), c.scenario.c_str(), c.concurrency, c.prompt_tokens, c.max_tokens,
              c.temperature);
  std::printf(
      "requests %d (errors %d) in %.2f s: %.2f requests/s\n"
      "output tokens %lld: %.1f output tokens/s\n"
      "TTFT ms: p50 %.2f p99 %.2f\ninter-token ms: p50 %.3f p99 %.3f\n",
      out["requests"].get<int>(), out["errors"].get<int>(), out["seconds"].get<double>(),
      out["requests_per_s"].get<double>(),
      static_cast<long long>(out["output_tokens"].get<int64_t>()),
      out["throughput_tokens_per_s"].get<double>(), out["ttft_ms_p50"].get<double>(),
      out["ttft_ms_p99"].get<double>(), out["itl_ms_p50"].get<double>(),
      out["itl_ms_p99"].get<double>());
  if (c.chat()) {
    std::printf("TTFT ms p50: first turn %.2f, later turns %.2f (p99 %.2f)\n",
                out["ttft_ms_p50_first_turn"].get<double>(),
                out["ttft_ms_p50_later_turns"].get<double>(),
                out["ttft_ms_p99_later_turns"].get<double>());
  }
  if (out.contains("stage_busy_fraction")) {
    std::printf("stage busy:");
    for (const auto& f : out["stage_busy_fraction"]) std::printf(" %.3f", f.get<double>());
    std::printf("; pipeline efficiency %.3f\n", out["pipeline_efficiency"].get<double>());
  }
  for (const auto& m : out["error_messages"]) {
    std::printf("error: %s\n", m.get<std::string>().c_str());
  }
}

}  // namespace

int BenchMain(int argc, char** argv) {
  CLI::App app{"Measures a shardserve router under concurrent streaming load.", "shardserve bench"};
  BenchConfig c;
  AddBenchFlags(app, &c);
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  if (c.requests <= 0) c.requests = 2 * c.concurrency;
  c.api_key = ApiKeyOrEnv(c.api_key);
  if (!UseClientTls(c.tls)) return 2;
  if (!ParseResponseFormat(&c)) return 2;

  auto channel = grpc::CreateChannel(c.server, ProcessChannelCredentials());
  auto stub = v1::InferenceService::NewStub(channel);
  v1::GetModelInfoResponse info;
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    Authorize(c, &context);
    grpc::Status s = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) {
      std::fprintf(stderr, "error: GetModelInfo on %s: %s\n", c.server.c_str(),
                   s.error_message().c_str());
      return 2;
    }
  }
  const int32_t vocab = static_cast<int32_t>(info.vocab_size());
  std::vector<std::string> workers;
  if (!c.worker_metrics.empty()) workers = absl::StrSplit(c.worker_metrics, ',');
  auto busy_before = ScrapeBusy(workers);
  if (!busy_before.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(busy_before.status().message()).c_str());
    return 2;
  }
  BenchResults results;
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < c.concurrency; ++t) {
    threads.emplace_back([&, t] { RunClient(c, channel, vocab, t, &next, &results); });
  }
  for (auto& t : threads) t.join();
  if (isatty(STDERR_FILENO)) std::fprintf(stderr, "\r\033[K");
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  nlohmann::json out = Summary(c, results, seconds);
  if (!workers.empty()) {
    auto busy_after = ScrapeBusy(workers);
    if (!busy_after.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(busy_after.status().message()).c_str());
      return 2;
    }
    AddBusy(*busy_before, *busy_after, seconds, &out);
  }
  if (c.json) {
    std::cout << out.dump() << std::endl;
  } else {
    PrintHuman(c, out);
  }
  return results.errors == 0 ? 0 : 1;
}

}  // namespace shardserve
