#include "cli/inspect.h"

#include <cstdio>
#include <iostream>
#include <string>
#include <string_view>

#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

constexpr const char* kUsage =
    "usage: shardserve inspect tokenize --model PATH --text TEXT [--no-bos] [--json]";

int UsageError(absl::string_view what) {
  std::cerr << "shardserve inspect: " << what << " (" << kUsage << ")\n";
  return 2;
}

int Tokenize(int argc, char** argv, int first) {
  std::string model, text;
  bool have_model = false, have_text = false, no_bos = false, json = false;
  for (int i = first; i < argc; ++i) {
    absl::string_view arg = argv[i];
    absl::string_view value;
    bool inline_value = false;
    if (const size_t eq = arg.find('=');
        arg.substr(0, 2) == "--" && eq != absl::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    auto take = [&](std::string* out, bool* have) -> bool {
      if (inline_value) {
        *out = std::string(value);
      } else {
        if (i + 1 >= argc) return false;
        *out = argv[++i];
      }
      *have = true;
      return true;
    };
    if (arg == "--model") {
      if (!take(&model, &have_model)) return UsageError("--model needs a value");
    } else if (arg == "--text") {
      if (!take(&text, &have_text)) return UsageError("--text needs a value");
    } else if (arg == "--no-bos" && !inline_value) {
      no_bos = true;
    } else if (arg == "--json" && !inline_value) {
      json = true;
    } else {
      return UsageError(std::string("unknown argument ") + std::string(argv[i]));
    }
  }
  if (!have_model) return UsageError("--model is required");
  if (!have_text) return UsageError("--text is required");

  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(model);
  if (!tok.ok()) {
    std::cerr << "shardserve inspect: cannot load tokenizer: " << tok.status().message() << "\n";
    return 1;
  }
  const std::vector<int32_t> ids = (*tok)->Encode(text, !no_bos);
  if (json) {
    nlohmann::json out;
    out["ids"] = ids;
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back((*tok)->IdToPiece(id));
    out["pieces"] = std::move(pieces);
    // Pieces are valid UTF-8 for every supported vocabulary; replace anything else rather than
    // failing.
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    for (int32_t id : ids) std::cout << id << "\t" << (*tok)->IdToPiece(id) << "\n";
  }
  std::cout.flush();
  return std::cout.good() ? 0 : 1;
}

}  // namespace

int InspectMain(int argc, char** argv) {
  // Accept both {"inspect", "tokenize", ...} and {"shardserve", "inspect", "tokenize", ...}.
  int i = 1;
  if (i < argc && absl::string_view(argv[i]) == "inspect") ++i;
  if (i >= argc) return UsageError("missing subcommand");
  const absl::string_view sub = argv[i];
  if (sub == "tokenize") return Tokenize(argc, argv, i + 1);
  if (sub == "--help" || sub == "-h" || sub == "help") {
    std::cout << kUsage << "\n";
    return 0;
  }
  return UsageError(std::string("unknown subcommand ") + std::string(sub));
}

}  // namespace shardserve
