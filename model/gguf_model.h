// Models stored as GGUF files (llama.cpp's format): the config from the file's metadata and a
// WeightSource that serves its tensors under Hugging Face names.
//
// Architectures `llama` and `qwen2`. llama.cpp stores Llama's q/k projection rows in Meta's
// interleaved RoPE order; they are permuted back to the rotate_half order on load, so a GGUF
// model computes exactly what the same safetensors model does. Tensor types F32, F16, BF16,
// Q8_0, Q4_0, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K and Q6_K; other types are refused by name.
#ifndef SHARDSERVE_MODEL_GGUF_MODEL_H_
#define SHARDSERVE_MODEL_GGUF_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/weights.h"

namespace shardserve {

absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& file);

// Takes shared ownership of the file; `config` must come from ConfigFromGguf(*file).
std::unique_ptr<WeightSource> NewGgufWeightSource(std::shared_ptr<const GgufFile> file,
                                                  const ModelConfig& config);

bool IsGgufPath(const std::string& path);

// Llama's q/k projection rows between the two RoPE orders, per head of D = rows / heads rows
// (D even): row h*D + 2j + i of llama.cpp's interleaved pairs is row h*D + i*D/2 + j of Hugging
// Face's rotate_half order, as transformers' converter does. `to_interleaved` picks the
// direction; src and dst must not overlap.
void PermuteRopeRows(const void* src, void* dst, int64_t rows, size_t row_bytes, int64_t heads,
                     bool to_interleaved);

// The GGUF name of a Hugging Face Llama/Qwen2 tensor ("model.layers.3.mlp.up_proj.weight" ->
// "blk.3.ffn_up.weight"); "" when there is none.
std::string GgufTensorName(const std::string& hf_name);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_GGUF_MODEL_H_
