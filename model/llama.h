// The Llama family as a pipeline stage: Llama 1/2/3 (rope_scaling linear and llama3), Mistral
// (full attention; sliding windows are not applied) and Qwen2 (q/k/v biases), with MHA, GQA or
// MQA and tied or untied embeddings. Plain C++ over the Backend interface.
#ifndef SHARDSERVE_MODEL_LLAMA_H_
#define SHARDSERVE_MODEL_LLAMA_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/stage.h"
#include "model/weights.h"

namespace shardserve {

// Takes ownership of `weights`; reads only the tensors of the stage's layers (and the embedding
// on the first stage, the final norm and head on the last). Errors name the tensor and the
// expected shape or dtype.
absl::StatusOr<std::unique_ptr<ModelStage>> LoadLlamaStage(const ModelConfig& config,
                                                           std::unique_ptr<WeightSource> weights,
                                                           const StageSpec& spec,
                                                           const KvCacheSpec& kv, Backend* backend);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_LLAMA_H_
