#include "model/stage.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/wire.h"
#include "model/deepseek.h"
#include "model/gguf_model.h"
#include "model/llama.h"
#include "model/weights.h"

namespace shardserve {

absl::Status ResolveKvSpec(const ModelConfig& c, KvCacheSpec* kv) {
  if (kv->block_size <= 0 || kv->block_size > kMaxKvBlockSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV block size ", kv->block_size, " outside [1, ", kMaxKvBlockSize, "]"));
  }
  if (kv->num_blocks <= 0) {
    kv->num_blocks = (c.max_position_embeddings + kv->block_size - 1) / kv->block_size;
  }
  return absl::OkStatus();
}

absl::Status ValidateSequenceStep(int64_t index, int64_t start_pos,
                                  absl::Span<const int32_t> tokens,
                                  absl::Span<const int32_t> block_table, const ModelConfig& c,
                                  const KvCacheSpec& kv, bool check_tokens) {
  auto bad = [&](absl::string_view field, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("sequences[", index, "].", field, ": ", what));
  };
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return bad("tokens", "empty");
  if (check_tokens) {
    for (int32_t t : tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return bad("tokens", absl::StrCat("id ", t, " outside [0, ", c.vocab_size, ")"));
      }
    }
  }
  // Compared before adding: start_pos comes off the wire and start_pos + n may overflow.
  if (start_pos < 0 || start_pos > c.max_position_embeddings - n) {
    return bad("start_pos",
               absl::StrCat("positions from ", start_pos, ", ", n,
                            " tokens, outside the context of ", c.max_position_embeddings));
  }
  const int64_t end = start_pos + n;
  const int64_t needed = (end + kv.block_size - 1) / kv.block_size;
  if (static_cast<int64_t>(block_table.size()) < needed) {
    return bad("block_table", absl::StrCat(block_table.size(), " blocks for ", end, " positions (",
                                           needed, " needed)"));
  }
  for (int32_t b : block_table) {
    if (b < 0 || b >= kv.num_blocks) {
      return bad("block_table", absl::StrCat("block ", b, " outside [0, ", kv.num_blocks, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ValidateStepBatch(absl::Span<const SequenceStep> batch,
                                          absl::Span<const float> hidden_in, const ModelConfig& c,
                                          const KvCacheSpec& kv, bool first) {
  if (batch.empty()) return absl::InvalidArgumentError("step has no sequences");
  int64_t total = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    RETURN_IF_ERROR(ValidateSequenceStep(static_cast<int64_t>(i), s.start_pos, s.tokens,
                                         s.block_table, c, kv, /*check_tokens=*/first));
    total += static_cast<int64_t>(s.tokens.size());
  }
  if (!first && static_cast<int64_t>(hidden_in.size()) != total * c.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("hidden states have ", hidden_in.size(),
                                                   " values, expected ", total, " x ",
                                                   c.hidden_size));
  }
  return total;
}

absl::StatusOr<std::unique_ptr<ModelStage>> LoadStage(const std::string& path,
                                                      const StageSpec& spec, const KvCacheSpec& kv,
                                                      Backend* backend) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (IsGgufPath(path)) {
    ASSIGN_OR_RETURN(std::shared_ptr<const GgufFile> file, GgufFile::Open(path));
    ASSIGN_OR_RETURN(ModelConfig config, ConfigFromGguf(*file));
    return LoadLlamaStage(config, NewGgufWeightSource(file, config), spec, kv, backend);
  }
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(absl::StrCat("model folder not found: ", path));
  }
  ASSIGN_OR_RETURN(ModelConfig config,
                   ModelConfig::FromFile((fs::path(path) / "config.json").string()));
  ASSIGN_OR_RETURN(auto weights, OpenSafetensorsFolder(path));
  switch (config.architecture) {
    case Architecture::kLlama:
    case Architecture::kMistral:
    case Architecture::kQwen2:
      return LoadLlamaStage(config, std::move(weights), spec, kv, backend);
    case Architecture::kDeepseekV2:
    case Architecture::kDeepseekV3:
      return LoadDeepseekStage(config, std::move(weights), spec, kv, backend);
  }
  return absl::UnimplementedError("unknown architecture");
}

}  // namespace shardserve
