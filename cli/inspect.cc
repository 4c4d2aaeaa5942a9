#include "cli/inspect.h"

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cli_flags.h"
#include "common/dtype.h"
#include "common/status.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

int Fail(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}

// "1,234,567".
std::string Grouped(int64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// "260.0 K", "8.03 B".
std::string Scaled(double n) {
  if (n >= 1e9) return absl::StrFormat("%.2f B", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.2f M", n / 1e6);
  if (n >= 1e3) return absl::StrFormat("%.1f K", n / 1e3);
  return absl::StrFormat("%.0f", n);
}

std::string Bytes(double n) {
  if (n >= double(1 << 30)) return absl::StrFormat("%.2f GiB", n / double(1 << 30));
  if (n >= double(1 << 20)) return absl::StrFormat("%.1f MiB", n / double(1 << 20));
  return absl::StrFormat("%.1f KiB", n / 1024.0);
}

// What the weights hold, by stored type: parameters and bytes.
struct WeightCounts {
  std::map<std::string, int64_t> params;
  std::map<std::string, int64_t> bytes;
  int64_t tensors = 0;
  int64_t total_params() const {
    int64_t n = 0;
    for (const auto& [_, p] : params) n += p;
    return n;
  }
  int64_t total_bytes() const {
    int64_t n = 0;
    for (const auto& [_, b] : bytes) n += b;
    return n;
  }
};

// The model's config, weights by type and a one-line description of its storage.
struct ModelFacts {
  std::string format;  // "safetensors" or "gguf"
  std::string storage;
  ModelConfig config;
  WeightCounts weights;
};

absl::StatusOr<ModelFacts> ReadModel(const std::string& path) {
  ModelFacts facts;
  std::error_code ec;
  if (IsGgufPath(path)) {
    if (!fs::is_regular_file(path, ec)) {
      return absl::NotFoundError(absl::StrCat("--model ", path, ": no such file"));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
    ASSIGN_OR_RETURN(facts.config, ConfigFromGguf(*file));
    for (const GgufTensorInfo& t : file->tensors()) {
      const GgmlTypeInfo* type = GgmlType(t.ggml_type);
      // Upper case, as safetensors spells its types: F32, BF16, Q4_K.
      const std::string name =
          type == nullptr ? absl::StrCat("type ", t.ggml_type) : absl::AsciiStrToUpper(type->name);
      facts.weights.params[name] += t.num_elements;
      facts.weights.bytes[name] += static_cast<int64_t>(t.size_bytes);
      ++facts.weights.tensors;
    }
    facts.format = "gguf";
    const uintmax_t size = fs::file_size(path, ec);
    facts.storage = absl::StrCat("GGUF v", file->version(),
                                 ec ? "" : absl::StrCat(", ", Bytes(static_cast<double>(size))));
    return facts;
  }
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("--model ", path, ": not a model folder or a .gguf file (no such folder)"));
  }
  if (!fs::is_regular_file(fs::path(path) / "config.json", ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", path,
                                            ": no config.json; a Hugging Face model folder holds "
                                            "config.json, *.safetensors and tokenizer.json"));
  }
  ASSIGN_OR_RETURN(facts.config, ModelConfig::FromFile((fs::path(path) / "config.json").string()));
  ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> weights, OpenSafetensorsFolder(path));
  for (const std::string& name : weights->Names()) {
    ASSIGN_OR_RETURN(TensorRef t, weights->Get(name));
    const std::string type(DTypeName(t.dtype));
    facts.weights.params[type] += t.numel();
    facts.weights.bytes[type] += static_cast<int64_t>(t.nbytes);
    ++facts.weights.tensors;
  }
  int files = 0;
  int64_t on_disk = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(path, ec)) {
    if (e.path().extension() == ".safetensors") {
      ++files;
      on_disk += static_cast<int64_t>(e.file_size(ec));
    }
  }
  facts.format = "safetensors";
  facts.storage = absl::StrCat("Hugging Face folder, ", files, " safetensors file",
                               files == 1 ? "" : "s", ", ", Bytes(on_disk));
  return facts;
}

struct Options {
  std::string model;
  bool json = false;
};

int Metadata(const Options& o) {
  absl::StatusOr<ModelFacts> facts = ReadModel(o.model);
  if (!facts.ok()) return Fail(std::string(facts.status().message()));
  const ModelConfig& c = facts->config;

  // The tokenizer and chat template: what the router will use.
  json tokenizer, chat;
  std::string tokenizer_line, chat_line;
  bool tokenizer_ok = true;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(o.model);
  if (tok.ok()) {
    const Tokenizer& t = **tok;
    std::vector<std::string> eos;
    for (int32_t id : t.eos_ids()) eos.push_back(t.IdToPiece(id));
    tokenizer = {{"vocab_size", t.vocab_size()},
                 {"bos", t.bos_id() >= 0 ? json(t.IdToPiece(t.bos_id())) : json(nullptr)},
                 {"eos", eos}};
    tokenizer_line = absl::StrCat(t.vocab_size(), " tokens, BOS ",
                                  t.bos_id() >= 0 ? t.IdToPiece(t.bos_id()) : "none", ", EOS ",
                                  eos.empty() ? "none" : absl::StrJoin(eos, " "));
    const std::string& jinja = t.chat_template();
    chat = {{"source_chars", jinja.size()}, {"family", nullptr}};
    if (jinja.empty()) {
      chat_line = "none (a chat request needs the router's --chat-template)";
    } else if (auto detected = ChatTemplate::Detect(jinja, t.bos_token(), t.eos_token());
               detected.ok()) {
      chat["family"] = std::string(ChatTemplateName(detected->kind()));
      chat_line = absl::StrCat(ChatTemplateName(detected->kind()), " (", jinja.size(),
                               " characters of Jinja)");
    } else {
      chat_line = absl::StrCat("not a known family (", jinja.size(),
                               " characters of Jinja): set the router's --chat-template");
    }
  } else {
    tokenizer_ok = false;
    tokenizer = {{"error", std::string(tok.status().message())}};
    tokenizer_line = absl::StrCat("cannot be loaded: ", tok.status().message());
    chat_line = "unknown (no tokenizer)";
  }

  const WeightCounts& w = facts->weights;
  if (o.json) {
    json out = {{"model", o.model},
                {"format", facts->format},
                {"architecture", c.model_type},
                {"layers", c.num_layers},
                {"hidden_size", c.hidden_size},
                {"intermediate_size", c.intermediate_size},
                {"attention_heads", c.num_heads},
                {"kv_heads", c.num_kv_heads},
                {"head_dim", c.head_dim},
                {"vocab_size", c.vocab_size},
                {"context", c.max_position_embeddings},
                {"rope_theta", c.rope_theta},
                {"tie_word_embeddings", c.tie_word_embeddings},
                {"parameters", w.total_params()},
                {"parameters_by_dtype", w.params},
                {"weight_bytes", w.total_bytes()},
                {"tensors", w.tensors},
                {"tokenizer", tokenizer},
                {"chat_template", chat}};
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    std::vector<std::string> by_type;
    for (const auto& [type, n] : w.params) {
      by_type.push_back(absl::StrCat(type, " ", Grouped(n), " (", Bytes(w.bytes.at(type)), ")"));
    }
    auto row = [](const char* key, const std::string& value) {
      std::cout << absl::StrFormat("%-14s %s\n", key, value);
    };
    row("model", absl::StrCat(o.model, " (", facts->storage, ")"));
    row("architecture", c.model_type);
    row("layers", std::to_string(c.num_layers));
    row("hidden", absl::StrCat(c.hidden_size, " (MLP ", c.intermediate_size, ")"));
    row("attention",
        absl::StrCat(c.num_heads, " heads, ", c.num_kv_heads, " KV heads, head_dim ", c.head_dim));
    row("vocabulary", std::to_string(c.vocab_size));
    row("context", absl::StrCat(c.max_position_embeddings, " tokens (rope_theta ",
                                absl::StrFormat("%g", c.rope_theta), ")"));
    row("parameters", absl::StrCat(Grouped(w.total_params()), " (", Scaled(w.total_params()),
                                   ") in ", w.tensors, " tensors"));
    row("by dtype", absl::StrJoin(by_type, "; "));
    row("tokenizer", tokenizer_line);
    row("chat template", chat_line);
  }
  std::cout.flush();
  if (!tokenizer_ok) return Fail(absl::StrCat("--model ", o.model, ": ", tokenizer_line));
  return std::cout.good() ? 0 : 1;
}

int Tokenize(int argc, char** argv) {
  CLI::App app{
      "Shows how a model's tokenizer splits a text: one id<TAB>piece line per token, or "
      "{\"ids\": [...], \"pieces\": [...]} with --json.",
      "shardserve inspect tokenize"};
  std::string model, text;
  bool no_bos = false, as_json = false;
  app.add_option("--model", model,
                 "model folder, folder of tokenizer files, tokenizer.json or .gguf file")
      ->required();
  app.add_option("--text", text, "text to tokenize")->required();
  app.add_flag("--no-bos", no_bos, "do not add the tokenizer's BOS");
  app.add_flag("--json", as_json, "print one JSON object");
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;

  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(model);
  if (!tok.ok()) {
    return Fail(
        absl::StrCat("--model ", model, ": cannot load a tokenizer: ", tok.status().message()));
  }
  const std::vector<int32_t> ids = (*tok)->Encode(text, !no_bos);
  if (as_json) {
    json out;
    out["ids"] = ids;
    json pieces = json::array();
    for (int32_t id : ids) pieces.push_back((*tok)->IdToPiece(id));
    out["pieces"] = std::move(pieces);
    // Pieces are valid UTF-8 for every supported vocabulary; replace anything else rather than
    // failing.
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    for (int32_t id : ids) std::cout << id << "\t" << (*tok)->IdToPiece(id) << "\n";
  }
  std::cout.flush();
  return std::cout.good() ? 0 : 1;
}

}  // namespace

int InspectMain(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "tokenize") {
    std::string name = absl::StrCat(argv[0], " tokenize");
    argv[1] = name.data();
    return Tokenize(argc - 1, argv + 1);
  }
  CLI::App app{
      "Shows a model's metadata without loading it: architecture, layers, attention "
      "shape, context, parameters by stored type, tokenizer and chat template. For a "
      "Hugging Face folder or a GGUF file.\n\nAlso: shardserve inspect tokenize --model "
      "PATH --text TEXT [--no-bos] [--json] (see its --help).",
      "shardserve inspect"};
  Options o;
  app.add_option("--model", o.model, "model folder (config.json, *.safetensors) or .gguf file")
      ->required();
  app.add_flag("--json", o.json, "print one JSON object");
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  return Metadata(o);
}

}  // namespace shardserve
