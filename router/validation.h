// Validation of public requests. Every failure is INVALID_ARGUMENT with a message that starts
// with the offending field's name ("sampling.top_p: ..."), so a client can tell what to fix.
#ifndef SHARDSERVE_ROUTER_VALIDATION_H_
#define SHARDSERVE_ROUTER_VALIDATION_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "shardserve/v1/inference.pb.h"
#include "shardserve/v1/worker.pb.h"

namespace shardserve {

struct ModelLimits {
  std::string name;  // the served model's name
  int64_t context = 0;
  int32_t vocab_size = 0;
};

constexpr int kMaxStopStrings = 16;
constexpr int kMaxStopStringBytes = 256;
constexpr int kMaxRequestIdBytes = 256;
constexpr int kMaxChatMessages = 1024;
// Tools one chat request may offer.
constexpr int kMaxTools = 128;

// Checks everything that does not need the tokenizer: model, prompt shape, max_tokens, stops,
// sampling, logprobs and chat messages.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, const ModelLimits& limits);

// Checks the tokenized prompt against the context. max_tokens 0 (unset) always fits once the
// prompt does.
absl::Status ValidatePromptLength(int64_t prompt_tokens, int32_t max_tokens,
                                  const ModelLimits& limits);

// The tokens to generate: the request's max_tokens, or when it is 0 (unset) the room left in
// the context after the prompt, capped by `limit` when that is positive (--max-tokens-limit).
int32_t ResolveMaxTokens(int32_t max_tokens, int64_t prompt_tokens, const ModelLimits& limits,
                         int32_t limit);

// The request's sampling parameters with defaults filled in, as the stages get them.
// `fresh_seed` is used when the request sets no seed.
v1::StepSampling ResolveSampling(const v1::GenerateRequest& request, uint64_t fresh_seed);

// INVALID_ARGUMENT "model: ..." unless `model` is empty or the served model's name.
absl::Status ValidateModelName(const std::string& model, const ModelLimits& limits);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_VALIDATION_H_
