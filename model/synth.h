// Random-weight models of real shapes, written in Hugging Face layout (config.json,
// model.safetensors, tokenizer.json, tokenizer_config.json), for tests and benchmarks.
//
// Matrices are normal(0, 0.02), norms are ones, biases normal(0, 0.02). The values depend only on
// the seed and the tensor's name, never on thread count. The tokenizer is a byte-fallback BPE
// over the 256 bytes plus printable ASCII pieces, padded with unused tokens to vocab_size, so
// any text encodes and decodes exactly.
#ifndef SHARDSERVE_MODEL_SYNTH_H_
#define SHARDSERVE_MODEL_SYNTH_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace shardserve {

// Shapes known by name: llama-110m, tinyllama-1.1b, llama3-8b, qwen2-0.5b, mistral-7b, and the
// small test shapes tiny-llama (5 layers), tiny-llama-8l, tiny-qwen2, tiny-llama3; DeepSeek:
// deepseek-v3-tiny, deepseek-v2-tiny (tests), deepseek-v3-mid and deepseek-v2-lite-shape
// (benchmarks); published large shapes for simulated stages: llama3-70b, llama3-405b, qwen2-72b,
// deepseek-v3.
absl::StatusOr<ModelConfig> SynthConfigByName(const std::string& name);
std::vector<std::string> SynthShapeNames();

struct SynthOptions {
  DType dtype = DType::kF32;
  uint64_t seed = 0;
  int threads = 0;        // 0: all CPUs
  bool progress = false;  // print progress to stderr
  // Standard deviation of matrix entries; tests raise it so attention and routing are far from
  // uniform.
  double stddev = 0.02;
  // Only config.json and the tokenizer files: a model by shape alone, for simulated stages
  // (shardserve-worker --backend sim).
  bool config_only = false;
};

// Creates `out_dir` (and parents) and writes the model there.
absl::Status WriteSynthModel(const ModelConfig& config, const std::string& out_dir,
                             const SynthOptions& options);

// The synthetic tokenizer.json for a vocabulary of `vocab_size` (>= 259) tokens.
std::string SynthTokenizerJson(int64_t vocab_size);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_SYNTH_H_
