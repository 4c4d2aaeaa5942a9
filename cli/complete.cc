#include "cli/complete.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/cli_flags.h"
#include "common/status.h"
#include "common/tls_flags.h"
#include "nlohmann/json.hpp"
#include "shardserve/v1/inference.grpc.pb.h"

namespace shardserve {

void SamplingFlags::Add(CLI::App& app) {
  app.add_option("--max-tokens", max_tokens, max_tokens_help)->capture_default_str();
  app.add_option("--temperature", temperature, "0 for greedy")->capture_default_str();
  app.add_option("--top-p", top_p, "nucleus mass in (0, 1]")->capture_default_str();
  app.add_option("--top-k", top_k, "0 disables")->capture_default_str();
  app.add_option("--min-p", min_p, "relative probability floor")->capture_default_str();
  app.add_option("--repetition-penalty", repetition_penalty)->capture_default_str();
  app.add_option("--seed", seed, "sampling seed (default: a fresh one per request)");
  app.add_option("--stop", stop, "stop string (repeatable)");
  app.add_option("--timeout-s", timeout_s, "deadline for the whole call")->capture_default_str();
  app.add_option("--api-key", api_key,
                 "sent as authorization: Bearer KEY (default: $SHARDSERVE_API_KEY)");
  AddClientTlsFlags(app, &tls);
}

std::string ApiKeyOrEnv(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("SHARDSERVE_API_KEY");
  return env != nullptr ? env : "";
}

std::string SamplingFlags::Key() const { return ApiKeyOrEnv(api_key); }

void SamplingFlags::Fill(v1::GenerateRequest* r) const {
  r->set_max_tokens(max_tokens);
  v1::SamplingParameters* s = r->mutable_sampling();
  s->set_temperature(temperature);
  s->set_top_p(top_p);
  s->set_top_k(top_k);
  s->set_min_p(min_p);
  s->set_repetition_penalty(repetition_penalty);
  if (seed.has_value()) s->set_seed(*seed);
  for (const std::string& x : stop) r->add_stop(x);
}

void PrintError(const absl::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
}

int FailWith(const absl::Status& s) {
  PrintError(s);
  return 2;
}

void AddClientTlsFlags(CLI::App& app, TlsFiles* tls) {
  AddTlsFlags(app, tls, "PEM client certificate, for routers that require one",
              "PEM CA bundle: connect with TLS, verifying the router");
}

bool UseClientTls(const TlsFiles& tls) {
  auto credentials = MakeChannelCredentials(tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(credentials.status().message()).c_str());
    return false;
  }
  SetProcessChannelCredentials(*credentials);
  return true;
}

absl::Status ExplainFailure(const std::string& server, const grpc::Status& s) {
  const auto code = static_cast<absl::StatusCode>(s.error_code());
  if (s.error_message().empty()) {
    return absl::Status(code, absl::StrCat(server, " answered ", absl::StatusCodeToString(code),
                                           " with no message (is it a shardserve router?)"));
  }
  if (absl::StrContains(s.error_message(), "http1.x server")) {
    return absl::Status(code, absl::StrCat(server,
                                           " speaks HTTP/1.x: that is the router's HTTP port "
                                           "(--http-listen); give its gRPC port (--listen)"));
  }
  return absl::Status(code, s.error_message());
}

absl::Status CheckServerAddress(const std::string& server) {
  if (absl::StrContains(server, "://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--server '", server,
                     "' is a URL; give the router's gRPC address as host:port (its --listen), e.g. "
                     "127.0.0.1:50051"));
  }
  return absl::OkStatus();
}

absl::Status StreamCompletion(const std::string& server, const v1::GenerateRequest& request,
                              const StreamOptions& options, CompletionResult* result) {
  auto stub =
      v1::InferenceService::NewStub(grpc::CreateChannel(server, ProcessChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
  // A Ctrl-C sets the flag from a signal handler; this thread turns it into a cancellation.
  std::atomic<bool> finished{false};
  std::thread watcher;
  if (options.interrupt != nullptr) {
    watcher = std::thread([&] {
      while (!finished.load()) {
        if (options.interrupt->load()) {
          context.TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse response;
  auto write = [](std::FILE* f, const std::string& s) {
    if (f == nullptr || s.empty()) return;
    std::fwrite(s.data(), 1, s.size(), f);
    std::fflush(f);
  };
  while (reader->Read(&response)) {
    result->text += response.text();
    result->reasoning += response.reasoning_text();
    result->ids.insert(result->ids.end(), response.token_ids().begin(), response.token_ids().end());
    write(options.reasoning_out, response.reasoning_text());
    write(options.out, response.text());
    if (response.has_seed()) result->seed = response.seed();
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result->finish_reason = response.finish_reason();
      result->usage = response.usage();
    }
  }
  grpc::Status s = reader->Finish();
  finished = true;
  if (watcher.joinable()) watcher.join();
  return s.ok() ? absl::OkStatus() : ExplainFailure(server, s);
}

absl::StatusOr<CompletionResult> RunCompletion(const std::string& server,
                                               const v1::GenerateRequest& request,
                                               absl::Duration timeout, std::FILE* out,
                                               const std::string& api_key,
                                               std::FILE* reasoning_out) {
  CompletionResult result;
  RETURN_IF_ERROR(StreamCompletion(
      server, request,
      {.timeout = timeout, .out = out, .reasoning_out = reasoning_out, .api_key = api_key},
      &result));
  return result;
}

bool HealthServing(const std::string& address, absl::Duration timeout) {
  auto channel = grpc::CreateChannel(address, ProcessChannelCredentials());
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  // An empty HealthCheckRequest (service "": the whole server); a ByteBuffer needs one slice.
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request_buf(&empty, 1), response_buf;
  grpc::GenericStub stub(channel);
  grpc::Status s;
  bool done = false;
  std::mutex mu;
  std::condition_variable cv;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buf,
                 &response_buf, [&](grpc::Status st) {
                   std::lock_guard<std::mutex> lock(mu);
                   s = st;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!s.ok()) return false;
  std::vector<grpc::Slice> slices;
  if (!response_buf.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& sl : slices)
    bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  // HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
  return bytes == std::string("\x08\x01", 2);
}

int CompleteMain(int argc, char** argv) {
  CLI::App app{"Streams a completion from a shardserve router.", "shardserve complete"};
  std::string server, prompt, model;
  SamplingFlags sampling;
  bool json = false, ignore_eos = false, separate_reasoning = false;
  app.add_option("--server", server, "router address host:port")->required();
  app.add_option("--prompt", prompt, "prompt text")->required();
  app.add_option("--model", model, "model name (default: the router's)");
  sampling.Add(app);
  app.add_flag("--ignore-eos", ignore_eos, "keep generating past end-of-sequence tokens");
  app.add_flag("--separate-reasoning", separate_reasoning,
               "ask for <think>...</think> reasoning apart from the answer (needs a router "
               "reasoning parser); it goes to stderr");
  app.add_flag("--json", json, "print one JSON object: ids, text, finish_reason, usage");
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  if (!UseClientTls(sampling.tls)) return 2;
  if (absl::Status s = CheckServerAddress(server); !s.ok()) return FailWith(s);
  v1::GenerateRequest request;
  request.set_model(model);
  request.set_text(prompt);
  request.set_ignore_eos(ignore_eos);
  if (separate_reasoning) request.set_separate_reasoning(true);
  sampling.Fill(&request);
  CompletionResult got;
  const absl::Status status = StreamCompletion(server, request,
                                               {.timeout = absl::Seconds(sampling.timeout_s),
                                                .out = json ? nullptr : stdout,
                                                .reasoning_out = json ? nullptr : stderr,
                                                .api_key = sampling.Key()},
                                               &got);
  const CompletionResult* result = &got;
  // Text already streamed ends its line before the error; nothing streamed, no empty line.
  if (!json && !got.reasoning.empty()) std::fputc('\n', stderr);
  if (!json && (status.ok() || !got.text.empty())) std::fputc('\n', stdout);
  if (!status.ok()) return FailWith(status);
  if (!json) return 0;
  nlohmann::json out;
  out["ids"] = result->ids;
  out["text"] = result->text;
  if (!result->reasoning.empty()) out["reasoning"] = result->reasoning;
  out["finish_reason"] = FinishReasonName(result->finish_reason);
  out["seed"] = result->seed;
  out["usage"] = {{"prompt_tokens", result->usage.prompt_tokens()},
                  {"completion_tokens", result->usage.completion_tokens()}};
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  return 0;
}

}  // namespace shardserve
