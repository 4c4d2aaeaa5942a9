// One pipeline stage of a model: layers [layer_begin, layer_end) plus, on the first stage, the
// token embedding and, on the last, the final norm and LM head.
//
// A stage holds its weights and its share of the paged KV cache (the same block ids on every
// stage; the caller, normally the router, owns the block tables). Forward() runs one step: a
// batch of sequences, each contributing a prompt chunk or one decode token, at any positions.
//
// Threading: Forward() calls must not overlap on one stage (a worker runs them in step order).
// The stage never trusts a StepBatch: Forward() validates ids, positions and block tables and
// returns INVALID_ARGUMENT instead of touching memory out of range.
#ifndef SHARDSERVE_MODEL_STAGE_H_
#define SHARDSERVE_MODEL_STAGE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "model/config.h"

namespace shardserve {

struct StageSpec {
  int64_t layer_begin = 0;
  int64_t layer_end = -1;  // -1: num_layers
  // Quantize the layer and head matrices at load (kQ8_0 or kQ4_0); kF32 keeps them as stored.
  // Matrices whose row length is not a multiple of 32 stay as stored.
  DType quantize = DType::kF32;
  // Derived from the range when unset: first = (layer_begin == 0), last = (layer_end ==
  // num_layers).
  bool is_first() const { return layer_begin == 0; }
  bool is_last(const ModelConfig& c) const { return layer_end == c.num_layers; }
};

struct KvCacheSpec {
  int64_t block_size = 16;
  int64_t num_blocks = 0;  // 0: enough for max_position_embeddings of one sequence
};

// Checks `kv`'s block size (1 to kMaxKvBlockSize, as on the wire) and fills in the default
// block count; shared by every architecture's loader.
absl::Status ResolveKvSpec(const ModelConfig& config, KvCacheSpec* kv);

// One sequence's part of a step.
struct SequenceStep {
  // New token ids (used by the first stage; other stages get hidden states instead but still
  // need the count, so tokens.size() is the number of rows this sequence contributes).
  std::vector<int32_t> tokens;
  int64_t start_pos = 0;             // position of tokens[0]
  std::vector<int32_t> block_table;  // covers positions [0, start_pos + tokens.size())
  bool compute_logits = false;       // last stage: logits for this sequence's last token
  // Last stage: the caller samples this sequence where the logits are (on the device), so they
  // need not be copied to the host. The copy is skipped when every sequence with compute_logits
  // sets it.
  bool keep_logits = false;
};

struct StepOutput {
  // Non-last stage: hidden states [total_tokens, hidden_size], rows in batch order.
  // Last stage: logits [number of sequences with compute_logits, vocab_size], in batch order;
  // empty when every such sequence set keep_logits (then only `logits` holds them).
  std::vector<float> data;
  int64_t rows = 0;
  int64_t cols = 0;
  // Last stage: the same logits in the backend's memory, valid until the next Forward (null for
  // stages that pick their own tokens).
  Tensor logits;
  // Last stage of a stage that picks its tokens itself (simulated stages): one token per
  // sequence with compute_logits, in batch order, and no logits; the runtime returns them as
  // sampled.
  std::vector<int32_t> tokens;
  // The stage's own account of the time its device was busy on this step (simulated stages);
  // negative: the runtime measures Forward.
  double busy_seconds = -1;
};

class ModelStage {
 public:
  virtual ~ModelStage() = default;
  virtual const ModelConfig& config() const = 0;
  virtual int64_t layer_begin() const = 0;
  virtual int64_t layer_end() const = 0;
  virtual const KvCacheSpec& kv_spec() const = 0;
  // Bytes of KV cache per token for this stage's layers.
  virtual int64_t KvBytesPerToken() const = 0;
  // Values per row of the activations this stage receives and sends: hidden_size, or a
  // simulated stage's compact stand-in.
  virtual int64_t activation_width() const { return config().hidden_size; }

  // hidden_in: [total_tokens, hidden_size] from the previous stage; empty on the first stage.
  virtual absl::StatusOr<StepOutput> Forward(absl::Span<const SequenceStep> batch,
                                             absl::Span<const float> hidden_in) = 0;
};

// Checks one sequence of a step against a stage with `config` and `kv`: at least one token,
// positions [start_pos, start_pos + tokens) inside the context (compared before adding: the
// values come off the wire), a block table covering them that names only existing blocks, and,
// when `check_tokens`, token ids in the vocabulary. INVALID_ARGUMENT naming
// `sequences[index].<field>`. The one validator of a sequence's geometry, used by
// ValidateStepBatch and by the worker's step-plan validation.
absl::Status ValidateSequenceStep(int64_t index, int64_t start_pos,
                                  absl::Span<const int32_t> tokens,
                                  absl::Span<const int32_t> block_table, const ModelConfig& config,
                                  const KvCacheSpec& kv, bool check_tokens);

// Checks a step before any memory is touched: non-empty sequences, positions inside the
// context, block tables long enough and naming existing blocks, token ids in the vocabulary
// (first stage), hidden states of the right size (other stages). Returns the step's token
// count, or INVALID_ARGUMENT naming the sequence and the problem. Shared by every architecture.
absl::StatusOr<int64_t> ValidateStepBatch(absl::Span<const SequenceStep> batch,
                                          absl::Span<const float> hidden_in,
                                          const ModelConfig& config, const KvCacheSpec& kv,
                                          bool is_first_stage);

// Loads a stage of the model at `path` (a Hugging Face folder) onto `backend`, which must
// outlive the stage. Dispatches on the config's architecture.
absl::StatusOr<std::unique_ptr<ModelStage>> LoadStage(const std::string& path,
                                                      const StageSpec& spec, const KvCacheSpec& kv,
                                                      Backend* backend);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_STAGE_H_
