// `shardserve complete` and `shardserve chat`: gRPC clients of a shardserve router.
//
// complete streams one completion to stdout (--json: one object with ids, text, finish_reason
// and usage). chat reads user turns from stdin and streams the assistant's replies, keeping the
// conversation. Both exit non-zero with one line on stderr when the server says no.
//
// Reasoning that the router splits out (reasoning_text: chat turns when the router runs a
// reasoning parser; complete with --separate-reasoning) streams to stderr, so stdout holds only
// the answer; complete --json puts it under "reasoning". Chat history keeps only the answers.
#ifndef SHARDSERVE_CLI_COMPLETE_H_
#define SHARDSERVE_CLI_COMPLETE_H_

#include <atomic>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "router/finish_reason.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

int CompleteMain(int argc, char** argv);
int ChatMain(int argc, char** argv);
// `shardserve status` (cli/status.cc): the router's cluster status as a table.
int StatusMain(int argc, char** argv);

struct CompletionResult {
  std::vector<int32_t> ids;
  std::string text;
  std::string reasoning;  // reasoning_text, when the router separated it
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  uint64_t seed = 0;  // the sampling seed the router used
};

// Sampling and connection flags shared by complete and chat.
struct SamplingFlags {
  int max_tokens = 128;
  const char* max_tokens_help = "tokens to generate";
  float temperature = 0.8f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  std::optional<uint64_t> seed;  // unset: the router draws one per request
  std::vector<std::string> stop;
  double timeout_s = 600;
  std::string api_key;
  TlsFiles tls;

  void Add(CLI::App& app);
  // --api-key, else $SHARDSERVE_API_KEY.
  std::string Key() const;
  void Fill(v1::GenerateRequest* r) const;
};

// `flag` when set, else $SHARDSERVE_API_KEY, else "": the key every client command sends.
std::string ApiKeyOrEnv(const std::string& flag);

// Prints "error: CODE: message" on stderr.
void PrintError(const absl::Status& status);
// PrintError, then 2: the exit status of every failure.
int FailWith(const absl::Status& status);

// INVALID_ARGUMENT when `server` is not a host:port (a URL such as http://...).
absl::Status CheckServerAddress(const std::string& server);

struct StreamOptions {
  absl::Duration timeout = absl::Minutes(10);
  std::FILE* out = nullptr;            // text deltas, as they arrive
  std::FILE* reasoning_out = nullptr;  // reasoning deltas
  std::string api_key;                 // sent as authorization: Bearer KEY when set
  // When it turns true (a Ctrl-C handler sets it) the call is cancelled: CANCELLED, with what
  // came so far in the result.
  const std::atomic<bool>* interrupt = nullptr;
};

// One Generate call; `result` holds what arrived even when the call fails part way.
absl::Status StreamCompletion(const std::string& server, const v1::GenerateRequest& request,
                              const StreamOptions& options, CompletionResult* result);

// Runs one Generate call against `server` with a deadline of `timeout`; text deltas are written
// to `out` and reasoning deltas to `reasoning_out` as they arrive, each when not null. A
// non-empty `api_key` is sent as `authorization: Bearer <api_key>` metadata.
absl::StatusOr<CompletionResult> RunCompletion(const std::string& server,
                                               const v1::GenerateRequest& request,
                                               absl::Duration timeout, std::FILE* out,
                                               const std::string& api_key = "",
                                               std::FILE* reasoning_out = nullptr);

// True when grpc.health.v1 at `address` answers SERVING for the whole server within `timeout`.
bool HealthServing(const std::string& address, absl::Duration timeout);

// --tls-ca, --tls-cert, --tls-key for a client of the router.
void AddClientTlsFlags(CLI::App& app, TlsFiles* tls);
// Makes every later channel of this process use `tls` (plaintext when empty). False, after
// printing an error naming the flag, when a file is unusable.
bool UseClientTls(const TlsFiles& tls);
// The status of a failed call to `server`, said so that a user can act on it (an HTTP port
// given for the gRPC one, a server that is not a router).
absl::Status ExplainFailure(const std::string& server, const grpc::Status& s);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_COMPLETE_H_
