// Fuzzes the OpenAI HTTP request parser and the request validation behind it: the first byte
// picks the endpoint, the rest is the request body. Any body must be rejected with
// INVALID_ARGUMENT (naming a parameter the error body can carry) or yield a GenerateRequest that
// the shared validation either accepts or rejects cleanly.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.h"
#include "router/http_openai.h"
#include "router/validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardserve::fuzz::Check;
  if (size == 0) return 0;
  const auto endpoint =
      (data[0] & 1) ? shardserve::OpenAiEndpoint::kChat : shardserve::OpenAiEndpoint::kCompletions;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);

  auto request = shardserve::ParseOpenAiRequest(endpoint, body);
  if (!request.ok()) {
    const int http = shardserve::HttpStatusFor(request.status());
    Check(http >= 400 && http < 600, "errors map to an HTTP error status");
    (void)shardserve::ParamOf(request.status());
    (void)shardserve::ErrorBody(request.status()).dump();
    return 0;
  }
  Check(request->endpoint == endpoint, "endpoint kept");
  const shardserve::ModelLimits limits{"stories260K", 512, 512};
  const absl::Status valid = shardserve::ValidateGenerateRequest(request->generate, limits);
  if (valid.ok()) {
    (void)shardserve::ResolveSampling(request->generate, 1);
    (void)shardserve::ValidatePromptLength(1, request->generate.max_tokens(), limits);
  } else {
    (void)shardserve::ErrorBody(valid).dump();
  }
  std::string wire;
  Check(request->generate.SerializeToString(&wire), "request serializes");
  return 0;
}
