#include "cli/generate.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cli_flags.h"
#include "common/status.h"
#include "common/wire.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "model/generator.h"
#include "model/gguf_export.h"
#include "model/gguf_model.h"
#include "model/stage.h"
#include "model/synth.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 2;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt-ids: '", part, "' is not an integer"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids is empty");
  return ids;
}

}  // namespace

namespace {

struct GenerateFlags {
  std::string model, prompt, prompt_ids_text;
  int64_t max_tokens = 128;
  SamplingParams sampling{.temperature = 0.8f};
  int threads = 0;
  bool json = false, ignore_eos = false, no_bos = false, mmap_weights = false;
  bool f32_activations = false;
  bool seed_given = false;
  std::string backend = "cpu";
  int device = 0;
  std::string quantize = "none";
};

void AddGenerateFlags(CLI::App& app, GenerateFlags* f) {
  SamplingParams& sp = f->sampling;
  app.add_option("--model", f->model, "Hugging Face model folder")->required();
  app.add_option("--prompt", f->prompt, "prompt text");
  app.add_option("--prompt-ids", f->prompt_ids_text, "prompt as token ids, comma-separated");
  app.add_option("--max-tokens", f->max_tokens, "tokens to generate")->capture_default_str();
  app.add_option("--temperature", sp.temperature, "0 for greedy")->capture_default_str();
  app.add_option("--top-k", sp.top_k, "0 disables")->capture_default_str();
  app.add_option("--top-p", sp.top_p, "nucleus mass in (0, 1]")->capture_default_str();
  app.add_option("--min-p", sp.min_p, "relative probability floor")->capture_default_str();
  app.add_option("--repetition-penalty", sp.repetition_penalty)->capture_default_str();
  app.add_option("--presence-penalty", sp.presence_penalty)->capture_default_str();
  app.add_option("--frequency-penalty", sp.frequency_penalty)->capture_default_str();
  app.add_option("--seed", sp.seed, "sampling seed (default: a fresh one, shown by --json)")
      ->each([f](const std::string&) { f->seed_given = true; });
  app.add_option("--threads", f->threads, "compute threads (0: all CPUs)")->capture_default_str();
  app.add_flag("--json", f->json, "print one JSON object instead of streaming text");
  app.add_flag("--ignore-eos", f->ignore_eos, "keep generating past end-of-sequence tokens");
  app.add_flag("--no-bos", f->no_bos, "do not prepend the BOS token to --prompt");
  app.add_option("--backend", f->backend, "compute backend: cpu or cuda")->capture_default_str();
  app.add_option("--device", f->device, "GPU index with --backend cuda")->capture_default_str();
  app.add_option("--quantize", f->quantize, "quantize weights at load: none, q8_0 or q4_0")
      ->capture_default_str();
  app.add_flag("--mmap-weights", f->mmap_weights,
               "compute from the file mapping in place (less memory, slower decode)");
  app.add_flag("--f32-activations", f->f32_activations,
               "CPU: multiply BF16 weights with F32 activations in prefill, not the faster "
               "AVX512-BF16 dot products that round activations to BF16 as GPUs do");
}

absl::Status ValidateGenerateFlags(const GenerateFlags& f) {
  if (f.prompt.empty() == f.prompt_ids_text.empty()) {
    return absl::InvalidArgumentError("give exactly one of --prompt and --prompt-ids");
  }
  if (f.max_tokens <= 0) return absl::InvalidArgumentError("--max-tokens must be positive");
  if (f.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (absl::Status s = ValidateSamplingParams(f.sampling); !s.ok()) {
    // Name the flag as the user spells it: top_p -> --top-p.
    std::string message(s.message());
    std::replace(message.begin(), message.begin() + message.find(' '), '_', '-');
    return absl::InvalidArgumentError(absl::StrCat("--", message));
  }
  return absl::OkStatus();
}

// The model's stage on the chosen backend; "loading ..." on a terminal, quiet when piped.
absl::StatusOr<std::unique_ptr<ModelStage>> LoadWholeModel(const GenerateFlags& f,
                                                           std::unique_ptr<Backend>* backend) {
  StageSpec spec;
  if (f.quantize != "none") {
    auto q = ParseDType(f.quantize);
    if (!q.has_value() || (*q != DType::kQ8_0 && *q != DType::kQ4_0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--quantize '", f.quantize, "' is not none, q8_0 or q4_0"));
    }
    spec.quantize = *q;
  }
  BackendOptions backend_options;
  backend_options.cpu.threads = f.threads;
  backend_options.cpu.copy_weights = !f.mmap_weights;
  backend_options.cpu.avx512_bf16 = !f.f32_activations;
  backend_options.device = f.device;
  ASSIGN_OR_RETURN(*backend, NewBackend(f.backend, backend_options));
  const bool tty = isatty(STDERR_FILENO);
  if (tty) std::fprintf(stderr, "loading %s...", f.model.c_str());
  auto stage = LoadStage(f.model, spec, {}, backend->get());
  if (tty) std::fprintf(stderr, "\r\033[K");
  return stage;
}

void PrintJson(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt_ids,
               const GenerateResult& result, uint64_t seed) {
  nlohmann::json out;
  out["seed"] = seed;
  out["prompt_ids"] = prompt_ids;
  out["ids"] = result.ids;
  StreamingDecoder decoder(tokenizer, /*skip_special=*/true, /*continuation=*/true);
  std::string text;
  for (int32_t id : result.ids) text += decoder.Add(id);
  out["text"] = text + decoder.Flush();
  out["finish_reason"] = result.finish_reason;
  out["prefill_tokens_per_s"] =
      result.prefill_seconds > 0 ? prompt_ids.size() / result.prefill_seconds : 0.0;
  out["decode_tokens_per_s"] = result.decode_seconds > 0 && result.ids.size() > 1
                                   ? (result.ids.size() - 1) / result.decode_seconds
                                   : 0.0;
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

}  // namespace

int GenerateMain(int argc, char** argv) {
  CLI::App app{"Generates text from a model in this process: no network, the reference path.",
               "shardserve generate"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  GenerateFlags f;
  AddGenerateFlags(app, &f);
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  if (absl::Status s = ValidateGenerateFlags(f); !s.ok()) return Fail(s);
  // As the router does: no seed is a fresh one, below 2^53 so that it is exact in JSON.
  if (!f.seed_given) {
    absl::BitGen bitgen;
    f.sampling.seed = absl::Uniform<uint64_t>(absl::IntervalClosed, bitgen, 0, kMaxDrawnSeed);
  }
  if (std::error_code ec; !std::filesystem::exists(f.model, ec)) {
    return Fail(absl::NotFoundError(absl::StrCat("--model ", f.model, ": no such file or folder")));
  }
  auto tokenizer = Tokenizer::Load(f.model);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  std::vector<int32_t> prompt_ids;
  if (!f.prompt_ids_text.empty()) {
    auto ids = ParseIds(f.prompt_ids_text);
    if (!ids.ok()) return Fail(ids.status());
    prompt_ids = *ids;
  } else {
    prompt_ids = (*tokenizer)->Encode(f.prompt, !f.no_bos);
  }
  std::unique_ptr<Backend> backend;
  auto stage = LoadWholeModel(f, &backend);
  if (!stage.ok()) return Fail(stage.status());

  // As the router: a prompt and max_tokens past the context is refused, not cut short.
  const int64_t context = (*stage)->config().max_position_embeddings;
  if (context > 0 && static_cast<int64_t>(prompt_ids.size()) + f.max_tokens > context) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--max-tokens ", f.max_tokens, ": the prompt's ", prompt_ids.size(),
                     " tokens + ", f.max_tokens, " is past the context of ", context)));
  }
  GenerateOptions options;
  options.max_tokens = f.max_tokens;
  options.sampling = f.sampling;
  if (!f.ignore_eos) {
    options.stop_ids = (*stage)->config().eos_token_ids;
    for (int32_t id : (*tokenizer)->eos_ids()) options.stop_ids.push_back(id);
  }
  // The output continues the prompt: its first token keeps its leading space, as the router's.
  StreamingDecoder decoder(**tokenizer, /*skip_special=*/true, /*continuation=*/true);
  auto on_token = [&](int32_t id) {
    if (!f.json) {
      const std::string piece = decoder.Add(id);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  auto result = Generate(**stage, prompt_ids, options, on_token);
  if (!result.ok()) return Fail(result.status());
  if (f.json) {
    PrintJson(**tokenizer, prompt_ids, *result, f.sampling.seed);
    return 0;
  }
  const std::string rest = decoder.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

int SynthMain(int argc, char** argv) {
  CLI::App app{"Writes a random-weight model folder in Hugging Face layout.", "shardserve synth"};
  std::string like, config_path, dtype_name = "f32", out;
  SynthOptions options;
  auto* like_opt = app.add_option("--like", like, "a known shape");
  app.add_option("--config", config_path, "a config.json to take the shape from")
      ->excludes(like_opt);
  app.add_option("--dtype", dtype_name, "f32, f16 or bf16")->capture_default_str();
  app.add_option("--out", out, "output folder")->required();
  app.add_option("--seed", options.seed, "random seed")->capture_default_str();
  app.add_option("--threads", options.threads, "threads (0: all CPUs)")->capture_default_str();
  app.add_flag("--config-only", options.config_only,
               "write only config.json and the tokenizer: a model by shape alone, for "
               "shardserve-worker --backend sim");
  app.footer("Known shapes: " + absl::StrJoin(SynthShapeNames(), ", "));
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  auto dtype = ParseDType(dtype_name);
  if (!dtype.has_value() || *dtype == DType::kI32 || IsQuantized(*dtype)) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--dtype '", dtype_name, "' is not f32, f16 or bf16")));
  }
  options.dtype = *dtype;
  options.progress = true;
  absl::StatusOr<ModelConfig> config = like.empty() && config_path.empty()
                                           ? absl::InvalidArgumentError("give --like or --config")
                                       : like.empty() ? ModelConfig::FromFile(config_path)
                                                      : SynthConfigByName(like);
  if (!config.ok()) return Fail(config.status());
  if (absl::Status s = WriteSynthModel(*config, out, options); !s.ok()) return Fail(s);
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}

int ExportGgufMain(int argc, char** argv) {
  CLI::App app{
      "Writes a Hugging Face Llama model folder as one GGUF file that llama.cpp's tools "
      "and shardserve load.",
      "shardserve export-gguf"};
  std::string model, out, dtype_name = "f16";
  app.add_option("--model", model,
                 "Hugging Face model folder (config.json, safetensors, "
                 "tokenizer.json)")
      ->required();
  app.add_option("--out", out, "output file (.gguf)")->required();
  app.add_option("--dtype", dtype_name, "f32, f16, bf16, q8_0 or q4_0")->capture_default_str();
  app.footer(
      "Quantize further with llama.cpp's llama-quantize (Q4_K_M, Q6_K, ...); shardserve loads "
      "its output.");
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  GgufExportOptions options;
  // ExportGguf refuses the types it cannot write, naming the ones it can.
  if (auto d = ParseDType(dtype_name); d.has_value()) {
    options.dtype = *d;
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--dtype '", dtype_name, "' is not f32, f16, bf16, q8_0 or q4_0")));
  }
  if (!IsGgufPath(out)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--out '", out, "' must end in .gguf")));
  }
  const bool tty = isatty(fileno(stderr));
  options.progress = [tty](uint64_t done, uint64_t total) {
    if (tty)
      std::fprintf(stderr, "\rexport-gguf: %5.1f%% of %.2f GB", 100.0 * done / total, total / 1e9);
  };
  if (absl::Status s = ExportGguf(model, out, options); !s.ok()) {
    if (tty) std::fputc('\n', stderr);
    return Fail(s);
  }
  std::fprintf(stderr, "%swrote %s\n", tty ? "\n" : "", out.c_str());
  return 0;
}

}  // namespace shardserve
