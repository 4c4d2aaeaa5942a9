// Writes a Hugging Face Llama model folder (config.json, *.safetensors, tokenizer.json) as one
// llama.cpp-compatible GGUF file: llama.cpp's tensor names and q/k row order, its metadata keys,
// and the vocabulary as a `llama` (SentencePiece-style) tokenizer. llama.cpp's tools
// (llama-quantize, llama-bench, llama-cli) and shardserve load the result.
//
// Supported: architecture llama without rope scaling other than linear, and tokenizer.json BPE
// models with byte_fallback (Llama-2, TinyLlama, Mistral, and the tokenizer `shardserve synth`
// writes). Anything else is refused by name. Norm weights are always written as F32, as llama.cpp
// does; matrices in the requested type.
#ifndef SHARDSERVE_MODEL_GGUF_EXPORT_H_
#define SHARDSERVE_MODEL_GGUF_EXPORT_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace shardserve {

struct GgufExportOptions {
  // F32, F16, BF16, Q8_0 or Q4_0 for the matrices and the embedding.
  DType dtype = DType::kF16;
  // Called after each tensor with (bytes written, total bytes).
  std::function<void(uint64_t, uint64_t)> progress;
};

// INVALID_ARGUMENT / UNIMPLEMENTED naming the file and what is unsupported; NOT_FOUND for a
// missing file; the writer's errors for the output path.
absl::Status ExportGguf(const std::string& model_dir, const std::string& out_path,
                        const GgufExportOptions& options);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_GGUF_EXPORT_H_
