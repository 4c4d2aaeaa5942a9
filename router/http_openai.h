// Translation between the OpenAI HTTP API (/v1/completions, /v1/chat/completions) and the
// router's GenerateRequest / GenerateResponse. Pure functions: no I/O, no threads.
//
// Request parsing checks the OpenAI-specific shape (types, n, stream_options, logprobs form);
// the values themselves (ranges, stop counts, the model name) are checked where the gRPC API
// checks them, by InferenceServiceImpl::Start, so both APIs give the same answers.
//
// Reasoning, as vLLM returns it: chat answers carry the model's reasoning (split out by the
// router's reasoning parser) in `reasoning_content` of the message or of each streamed delta,
// and the rest in `content`; completions keep the text whole, tags included.
#ifndef SHARDSERVE_ROUTER_HTTP_OPENAI_H_
#define SHARDSERVE_ROUTER_HTTP_OPENAI_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

enum class OpenAiEndpoint { kCompletions, kChat };

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  v1::GenerateRequest generate;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Default max_tokens: /v1/completions' is OpenAI's and vLLM's (16); chat's, as in vLLM, is the
// room left in the context after the prompt (0 in GenerateRequest).
constexpr int kDefaultCompletionTokens = 16;
constexpr int kDefaultChatTokens = 0;

// INVALID_ARGUMENT whose message starts with the offending parameter ("n: ...").
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, const std::string& body);

// The parameter an INVALID_ARGUMENT message names ("sampling.top_p: x" -> "top_p"), or "".
std::string ParamOf(const absl::Status& status);

// True for the "model: unknown model '...'" INVALID_ARGUMENT of ValidateModelName: HTTP 404
// (code model_not_found), as OpenAI answers an unknown model. Other problems with the model
// field (a non-string value) are malformed requests: 400.
bool IsUnknownModel(const absl::Status& status);

// {"error": {"message", "type", "param", "code"}} and the HTTP status for `status`.
int HttpStatusFor(const absl::Status& status);
nlohmann::json ErrorBody(const absl::Status& status);
// The same shape from its parts (an empty `param` is null), for errors with no absl::Status
// (405 method not allowed).
nlohmann::json ErrorBody(const std::string& message, const std::string& type,
                         const std::string& param, const nlohmann::json& code);

// Builds the JSON objects OpenAI clients expect. `id` and `created` are fixed per request.
class OpenAiResponseBuilder {
 public:
  OpenAiResponseBuilder(const OpenAiRequest& request, std::string id, std::string model,
                        int64_t created, const Tokenizer* tokenizer);

  // One streamed chunk for `delta` (text, tokens, logprobs, maybe the finish reason). The first
  // carries the request's sampling seed in `seed`, as the non-streamed answer does.
  nlohmann::json Chunk(const v1::GenerateResponse& delta, bool first);
  // The last streamed chunk when include_usage is set: empty choices and the usage.
  nlohmann::json UsageChunk(const v1::Usage& usage) const;
  // Accumulates a delta for the non-streamed answer.
  void Add(const v1::GenerateResponse& delta);
  nlohmann::json Final() const;

 private:
  // `text_offset`: where the delta's first token starts in the completion text; advanced past
  // the delta's tokens.
  nlohmann::json Logprobs(const v1::GenerateResponse& delta, int64_t* text_offset) const;
  static nlohmann::json UsageJson(const v1::Usage& usage);

  const OpenAiEndpoint endpoint_;
  const bool logprobs_;
  const std::string id_;
  const std::string model_;
  const int64_t created_;
  const Tokenizer* const tokenizer_;
  std::string text_;
  std::string reasoning_;
  v1::GenerateResponse all_;  // token ids and logprobs so far
  v1::FinishReason finish_ = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage_;
  int64_t stream_text_offset_ = 0;  // characters streamed so far
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_HTTP_OPENAI_H_
