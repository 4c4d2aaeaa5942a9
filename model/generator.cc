#include "model/generator.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace shardserve {

absl::StatusOr<GenerateResult> Generate(ModelStage& stage, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& options,
                                        const std::function<bool(int32_t)>& on_token) {
  const ModelConfig& c = stage.config();
  if (stage.layer_begin() != 0 || stage.layer_end() != c.num_layers) {
    return absl::FailedPreconditionError("Generate needs a stage holding every layer");
  }
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  if (options.max_tokens <= 0) return absl::InvalidArgumentError("max_tokens must be positive");
  RETURN_IF_ERROR(ValidateSamplingParams(options.sampling));
  const int64_t context = std::min<int64_t>(
      c.max_position_embeddings, stage.kv_spec().num_blocks * stage.kv_spec().block_size);
  const int64_t total = static_cast<int64_t>(prompt.size()) + options.max_tokens;
  if (static_cast<int64_t>(prompt.size()) >= context) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt of ", prompt.size(), " tokens does not fit the context of ", context));
  }
  const int64_t max_tokens =
      std::min(options.max_tokens, context - static_cast<int64_t>(prompt.size()));
  (void)total;

  SequenceStep step;
  step.block_table.resize(stage.kv_spec().num_blocks);
  std::iota(step.block_table.begin(), step.block_table.end(), 0);

  std::vector<int32_t> history = prompt;
  GenerateResult result;
  result.finish_reason = "length";
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  StepOutput out;
  const int64_t chunk = std::max<int64_t>(1, options.prefill_chunk);
  for (int64_t begin = 0; begin < static_cast<int64_t>(prompt.size()); begin += chunk) {
    const int64_t end = std::min<int64_t>(prompt.size(), begin + chunk);
    step.tokens.assign(prompt.begin() + begin, prompt.begin() + end);
    step.start_pos = begin;
    step.compute_logits = end == static_cast<int64_t>(prompt.size());
    ASSIGN_OR_RETURN(out, stage.Forward({&step, 1}, {}));
  }
  const auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  Clock::time_point first_token_time;
  for (int64_t i = 0; i < max_tokens; ++i) {
    const int64_t position = static_cast<int64_t>(history.size());
    const SampleResult s = Sample(out.data, options.sampling, position, history);
    if (i == 0) first_token_time = Clock::now();
    result.ids.push_back(s.token);
    result.logprobs.push_back(s.logprob);
    history.push_back(s.token);
    const bool keep_going = on_token ? on_token(s.token) : true;
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), s.token) !=
        options.stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (!keep_going) {
      result.finish_reason = "stop";
      break;
    }
    if (i + 1 == max_tokens) break;
    step.tokens.assign(1, s.token);
    step.start_pos = position;
    step.compute_logits = true;
    ASSIGN_OR_RETURN(out, stage.Forward({&step, 1}, {}));
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - first_token_time).count();
  return result;
}

}  // namespace shardserve
