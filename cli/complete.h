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

#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "common/tls.h"
#include "router/finish_reason.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

int CompleteMain(int argc, char** argv);
int ChatMain(int argc, char** argv);

struct CompletionResult {
  std::vector<int32_t> ids;
  std::string text;
  std::string reasoning;  // reasoning_text, when the router separated it
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
};

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

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_COMPLETE_H_
