#include "cli/complete.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <mutex>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/tls_flags.h"
#include "nlohmann/json.hpp"
#include "shardserve/v1/inference.grpc.pb.h"

namespace shardserve {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

// Flags shared by complete and chat.
struct SamplingFlags {
  int max_tokens = 128;
  float temperature = 0.8f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  double timeout_s = 600;
  std::string api_key;
  TlsFiles tls;

  void Add(CLI::App& app) {
    app.add_option("--max-tokens", max_tokens, "tokens to generate")->capture_default_str();
    app.add_option("--temperature", temperature, "0 for greedy")->capture_default_str();
    app.add_option("--top-p", top_p, "nucleus mass in (0, 1]")->capture_default_str();
    app.add_option("--top-k", top_k, "0 disables")->capture_default_str();
    app.add_option("--min-p", min_p, "relative probability floor")->capture_default_str();
    app.add_option("--repetition-penalty", repetition_penalty)->capture_default_str();
    app.add_option("--seed", seed, "sampling seed")->capture_default_str();
    app.add_option("--stop", stop, "stop string (repeatable)");
    app.add_option("--timeout-s", timeout_s, "deadline for the whole call")->capture_default_str();
    app.add_option("--api-key", api_key,
                   "sent as authorization: Bearer KEY (default: $SHARDSERVE_API_KEY)");
    AddClientTlsFlags(app, &tls);
  }
  std::string Key() const {
    if (!api_key.empty()) return api_key;
    const char* env = std::getenv("SHARDSERVE_API_KEY");
    return env != nullptr ? env : "";
  }
  void Fill(v1::GenerateRequest* r) const {
    r->set_max_tokens(max_tokens);
    v1::SamplingParameters* s = r->mutable_sampling();
    s->set_temperature(temperature);
    s->set_top_p(top_p);
    s->set_top_k(top_k);
    s->set_min_p(min_p);
    s->set_repetition_penalty(repetition_penalty);
    s->set_seed(seed);
    for (const std::string& x : stop) r->add_stop(x);
  }
};

}  // namespace

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

absl::StatusOr<CompletionResult> RunCompletion(const std::string& server,
                                               const v1::GenerateRequest& request,
                                               absl::Duration timeout, std::FILE* out,
                                               const std::string& api_key,
                                               std::FILE* reasoning_out) {
  auto stub =
      v1::InferenceService::NewStub(grpc::CreateChannel(server, ProcessChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
  auto reader = stub->Generate(&context, request);
  CompletionResult result;
  v1::GenerateResponse response;
  auto write = [](std::FILE* f, const std::string& s) {
    if (f == nullptr || s.empty()) return;
    std::fwrite(s.data(), 1, s.size(), f);
    std::fflush(f);
  };
  while (reader->Read(&response)) {
    result.text += response.text();
    result.reasoning += response.reasoning_text();
    result.ids.insert(result.ids.end(), response.token_ids().begin(), response.token_ids().end());
    write(reasoning_out, response.reasoning_text());
    write(out, response.text());
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish_reason = response.finish_reason();
      result.usage = response.usage();
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) {
    return absl::Status(
        static_cast<absl::StatusCode>(s.error_code()),
        s.error_message().empty()
            ? absl::StrCat(server, " answered ",
                           absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())),
                           " with no message (is it a shardserve router?)")
            : s.error_message());
  }
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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (!UseClientTls(sampling.tls)) return 2;
  v1::GenerateRequest request;
  request.set_model(model);
  request.set_text(prompt);
  request.set_ignore_eos(ignore_eos);
  if (separate_reasoning) request.set_separate_reasoning(true);
  sampling.Fill(&request);
  auto result = RunCompletion(server, request, absl::Seconds(sampling.timeout_s),
                              json ? nullptr : stdout, sampling.Key(), json ? nullptr : stderr);
  if (!result.ok()) {
    if (!json) std::fputc('\n', stdout);
    return Fail(result.status());
  }
  if (!json) {
    if (!result->reasoning.empty()) std::fputc('\n', stderr);
    std::fputc('\n', stdout);
    return 0;
  }
  nlohmann::json out;
  out["ids"] = result->ids;
  out["text"] = result->text;
  if (!result->reasoning.empty()) out["reasoning"] = result->reasoning;
  out["finish_reason"] = FinishReasonName(result->finish_reason);
  out["usage"] = {{"prompt_tokens", result->usage.prompt_tokens()},
                  {"completion_tokens", result->usage.completion_tokens()}};
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  return 0;
}

int ChatMain(int argc, char** argv) {
  CLI::App app{
      "Chats with a model served by a shardserve router (one line per turn; "
      "empty line or /exit ends).",
      "shardserve chat"};
  std::string server, system, model;
  SamplingFlags sampling;
  sampling.max_tokens = 256;
  app.add_option("--server", server, "router address host:port")->required();
  app.add_option("--system", system, "system prompt");
  app.add_option("--model", model, "model name (default: the router's)");
  sampling.Add(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (!UseClientTls(sampling.tls)) return 2;
  if (!UseClientTls(sampling.tls)) return 2;
  v1::GenerateRequest request;
  request.set_model(model);
  sampling.Fill(&request);
  if (!system.empty()) {
    v1::ChatMessage* m = request.mutable_chat()->add_messages();
    m->set_role("system");
    m->set_content(system);
  }
  std::string line;
  while (true) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line) || line.empty() || line == "/exit") break;
    v1::ChatMessage* user = request.mutable_chat()->add_messages();
    user->set_role("user");
    user->set_content(line);
    auto result = RunCompletion(server, request, absl::Seconds(sampling.timeout_s), stdout,
                                sampling.Key(), stderr);
    if (!result.ok()) {
      std::fputc('\n', stdout);
      return Fail(result.status());
    }
    if (!result->reasoning.empty()) std::fputc('\n', stderr);
    std::fputc('\n', stdout);
    v1::ChatMessage* reply = request.mutable_chat()->add_messages();
    reply->set_role("assistant");
    reply->set_content(result->text);
  }
  return 0;
}

}  // namespace shardserve
