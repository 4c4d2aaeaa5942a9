#include "cli/bench.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"
#include "cli/complete.h"
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

}  // namespace

int BenchMain(int argc, char** argv) {
  CLI::App app{"Measures a shardserve router under concurrent streaming load.", "shardserve bench"};
  std::string server;
  int concurrency = 8, prompt_tokens = 64, max_tokens = 64, requests = 0;
  float temperature = 0.0f;
  double timeout_s = 600;
  bool json = false;
  app.add_option("--server", server, "router address host:port")->required();
  app.add_option("--concurrency", concurrency, "streams in flight")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens, "prompt length in tokens")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-tokens", max_tokens, "tokens generated per request")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--requests", requests,
                 "requests in total; chat: conversations (0: 2 x concurrency)")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--temperature", temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--timeout-s", timeout_s, "deadline per request")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  std::string scenario = "random";
  int turns = 4, user_tokens = 32;
  app.add_option("--scenario", scenario,
                 "random: independent random prompts; chat: multi-turn conversations, each turn "
                 "resending the conversation so far plus --user-tokens new tokens")
      ->check(CLI::IsMember({"random", "chat"}))
      ->capture_default_str();
  app.add_option("--turns", turns, "chat: turns per conversation")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--user-tokens", user_tokens, "chat: new tokens per later turn")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_flag("--json", json, "print one JSON object");
  TlsFiles tls;
  AddClientTlsFlags(app, &tls);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (requests <= 0) requests = 2 * concurrency;
  if (!UseClientTls(tls)) return 2;

  auto channel = grpc::CreateChannel(server, ProcessChannelCredentials());
  auto stub = v1::InferenceService::NewStub(channel);
  v1::GetModelInfoResponse info;
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Status s = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) {
      std::fprintf(stderr, "error: GetModelInfo on %s: %s\n", server.c_str(),
                   s.error_message().c_str());
      return 1;
    }
  }
  const int32_t vocab = static_cast<int32_t>(info.vocab_size());

  const bool chat = scenario == "chat";
  const int total_requests = chat ? requests * turns : requests;
  std::mutex mu;
  std::vector<double> ttft_ms, itl_ms, ttft_first_ms, ttft_later_ms;
  std::vector<std::string> error_messages;
  int64_t tokens = 0;
  int errors = 0;
  int done = 0;
  const bool tty = isatty(STDERR_FILENO);  // progress on a terminal only
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      auto local_stub = v1::InferenceService::NewStub(channel);
      std::mt19937 rng(1234 + t);
      std::uniform_int_distribution<int32_t> id(3, std::max(3, vocab - 1));
      while (true) {
        const int n = next++;
        if (n >= requests) break;
        // A conversation (chat) or one request: each turn sends everything so far.
        std::vector<int32_t> conversation;
        for (int i = 0; i < prompt_tokens; ++i) conversation.push_back(id(rng));
        for (int turn = 0; turn < (chat ? turns : 1); ++turn) {
          if (turn > 0) {
            for (int i = 0; i < user_tokens; ++i) conversation.push_back(id(rng));
          }
          v1::GenerateRequest req;
          req.set_request_id("bench-" + std::to_string(n) + "-" + std::to_string(turn));
          req.mutable_token_ids()->mutable_ids()->Add(conversation.begin(), conversation.end());
          req.set_max_tokens(max_tokens);
          req.set_ignore_eos(true);
          req.mutable_sampling()->set_temperature(temperature);
          req.mutable_sampling()->set_seed(n);
          grpc::ClientContext rpc;
          rpc.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(timeout_s)));
          const auto sent = Clock::now();
          auto last = sent;
          std::vector<double> itl;
          double ttft = -1;
          int64_t got = 0;
          auto reader = local_stub->Generate(&rpc, req);
          v1::GenerateResponse resp;
          while (reader->Read(&resp)) {
            const int k = resp.token_ids_size();
            if (k == 0) continue;
            const auto now = Clock::now();
            if (ttft < 0) {
              ttft = std::chrono::duration<double, std::milli>(now - sent).count();
              for (int i = 1; i < k; ++i) itl.push_back(0);
            } else {
              // Tokens that arrive together share the interval.
              const double dt = std::chrono::duration<double, std::milli>(now - last).count() / k;
              for (int i = 0; i < k; ++i) itl.push_back(dt);
            }
            last = now;
            got += k;
            conversation.insert(conversation.end(), resp.token_ids().begin(),
                                resp.token_ids().end());
          }
          grpc::Status s = reader->Finish();
          std::lock_guard<std::mutex> lock(mu);
          if (!s.ok()) {
            ++errors;
            if (error_messages.size() < 5) error_messages.push_back(s.error_message());
            break;  // the conversation cannot go on
          }
          tokens += got;
          if (tty) std::fprintf(stderr, "\rbench: %d/%d requests", ++done, total_requests);
          if (ttft >= 0) {
            ttft_ms.push_back(ttft);
            (turn == 0 ? ttft_first_ms : ttft_later_ms).push_back(ttft);
          }
          itl_ms.insert(itl_ms.end(), itl.begin(), itl.end());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  if (tty) std::fprintf(stderr, "\r\033[K");
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  nlohmann::json out;
  out["server"] = server;
  out["concurrency"] = concurrency;
  out["prompt_tokens"] = prompt_tokens;
  out["max_tokens"] = max_tokens;
  out["scenario"] = scenario;
  out["requests"] = total_requests;
  if (chat) {
    out["conversations"] = requests;
    out["turns"] = turns;
    out["user_tokens"] = user_tokens;
    out["ttft_ms_p50_first_turn"] = Percentile(ttft_first_ms, 0.5);
    out["ttft_ms_p50_later_turns"] = Percentile(ttft_later_ms, 0.5);
    out["ttft_ms_p99_later_turns"] = Percentile(ttft_later_ms, 0.99);
  }
  out["errors"] = errors;
  out["seconds"] = seconds;
  out["output_tokens"] = tokens;
  out["throughput_tokens_per_s"] = seconds > 0 ? tokens / seconds : 0.0;
  out["ttft_ms_p50"] = Percentile(ttft_ms, 0.5);
  out["ttft_ms_p99"] = Percentile(ttft_ms, 0.99);
  out["itl_ms_p50"] = Percentile(itl_ms, 0.5);
  out["itl_ms_p99"] = Percentile(itl_ms, 0.99);
  out["error_messages"] = error_messages;
  if (json) {
    std::cout << out.dump() << std::endl;
  } else {
    std::printf(
        "requests %d (errors %d), %lld tokens in %.2f s: %.1f tokens/s\n"
        "TTFT ms: p50 %.2f p99 %.2f\ninter-token ms: p50 %.3f p99 %.3f\n",
        total_requests, errors, static_cast<long long>(tokens), seconds,
        out["throughput_tokens_per_s"].get<double>(), out["ttft_ms_p50"].get<double>(),
        out["ttft_ms_p99"].get<double>(), out["itl_ms_p50"].get<double>(),
        out["itl_ms_p99"].get<double>());
    if (chat) {
      std::printf("TTFT ms p50: first turn %.2f, later turns %.2f (p99 %.2f)\n",
                  out["ttft_ms_p50_first_turn"].get<double>(),
                  out["ttft_ms_p50_later_turns"].get<double>(),
                  out["ttft_ms_p99_later_turns"].get<double>());
    }
    for (const std::string& m : error_messages) std::printf("error: %s\n", m.c_str());
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace shardserve
