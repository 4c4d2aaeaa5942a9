#include "model/stage.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/deepseek.h"
#include "model/gguf_model.h"
#include "model/llama.h"
#include "model/weights.h"

namespace shardserve {

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
