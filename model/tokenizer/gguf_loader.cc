// Loads a tokenizer from GGUF `tokenizer.ggml.*` metadata (vocab-only files included).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_state.h"

namespace shardserve::tokenizer_internal {
namespace {

using gguf_token::kByte;
using gguf_token::kControl;
using gguf_token::kNormal;
using gguf_token::kUnknown;
using gguf_token::kUserDefined;

struct PreSpec {
  std::vector<absl::string_view> names;
  std::vector<absl::string_view> patterns;  // applied in order as Isolated splits
  bool ignore_merges = false;
  bool add_bos = false;
};

constexpr absl::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::vector<PreSpec>& PreSpecs() {
  static const auto* specs = new std::vector<PreSpec>{
      {{"llama-bpe", "llama3", "llama-v3", "smaug-bpe"}, {kLlama3Pattern}, true, true},
      {{"qwen2", "qwen", "qwen3"}, {kQwen2Pattern}, false, false},
      {{"deepseek-llm"},
       {"[\r\n]",
        "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-"
        "\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{"
        "386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-"
        "\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{"
        "1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{"
        "1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}"
        "-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{"
        "1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}"
        "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{"
        "2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{4B}-\\x{212D}\\x{212F}-"
        "\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{"
        "2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"
        "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{"
        "ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{"
        "10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}"
        "-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
        "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"},
       false,
       true},
      {{"deepseek-coder"},
       {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"},
       false,
       true},
      {{"deepseek-v3"},
       {"\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
        "[!\"#$%&'()*+,\\-./"
        ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
        "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
       false,
       true},
      {{"gpt-2", "gpt2", "default"},
       {R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"},
       false,
       false},
  };
  return *specs;
}

absl::Status Bad(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
  absl::StatusOr<std::string> model_name = gguf->GetString("tokenizer.ggml.model");
  if (!model_name.ok()) {
    return Bad(path, "no tokenizer.ggml.model: the file has no vocabulary");
  }
  ASSIGN_OR_RETURN(std::vector<std::string> tokens, gguf->GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = tokens.size();
  if (n == 0 || n >= (1u << 24)) return Bad(path, "tokenizer.ggml.tokens has a bad size");
  std::vector<int64_t> types(n, kNormal);
  if (gguf->Has("tokenizer.ggml.token_type")) {
    ASSIGN_OR_RETURN(types, gguf->GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) return Bad(path, "tokenizer.ggml.token_type size != tokens size");
  }
  auto int_or = [&](absl::string_view key, int64_t fallback) -> int64_t {
    absl::StatusOr<int64_t> v = gguf->GetInt(key);
    return v.ok() ? *v : fallback;
  };
  auto bool_or = [&](absl::string_view key, bool fallback) -> bool {
    absl::StatusOr<bool> v = gguf->GetBool(key);
    return v.ok() ? *v : fallback;
  };

  auto state = std::make_unique<TokenizerState>();
  state->pieces = tokens;
  state->decoded.resize(n);
  BpeOptions opt;
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<float> scores;
  std::vector<std::string> internal(n);
  bool add_bos = false;

  if (*model_name == "llama") {
    opt.use_scores = true;
    opt.byte_fallback = true;
    if (gguf->Has("tokenizer.ggml.scores")) {
      ASSIGN_OR_RETURN(scores, gguf->GetFloatArray("tokenizer.ggml.scores"));
      if (scores.size() != n) return Bad(path, "tokenizer.ggml.scores size != tokens size");
    } else {
      scores.assign(n, 0.0f);
    }
    const bool add_space_prefix = bool_or("tokenizer.ggml.add_space_prefix", true);
    std::vector<NormalizerStep> norm;
    if (add_space_prefix) norm.push_back({NormalizerKind::kPrepend, "", "\xE2\x96\x81"});
    norm.push_back({NormalizerKind::kReplace, " ", "\xE2\x96\x81"});
    state->normalizer = Normalizer(std::move(norm));
    state->strip_leading_space = add_space_prefix;
    for (size_t i = 0; i < n; ++i) {
      internal[i] = tokens[i];
      const int b = types[i] == kByte ? ByteFallbackValue(tokens[i]) : -1;
      state->decoded[i] = b >= 0 ? std::string(1, static_cast<char>(b))
                                 : ReplaceAll(tokens[i], "\xE2\x96\x81", " ");
    }
    opt.unk_id = static_cast<int32_t>(int_or("tokenizer.ggml.unknown_token_id", -1));
    add_bos = true;
  } else if (*model_name == "gpt2") {
    opt.byte_level = true;
    std::string pre = "default";
    if (gguf->Has("tokenizer.ggml.pre")) {
      ASSIGN_OR_RETURN(pre, gguf->GetString("tokenizer.ggml.pre"));
    }
    const PreSpec* spec = nullptr;
    for (const PreSpec& s : PreSpecs()) {
      if (std::find(s.names.begin(), s.names.end(), pre) != s.names.end()) spec = &s;
    }
    if (spec == nullptr) {
      std::vector<absl::string_view> known;
      for (const PreSpec& s : PreSpecs()) known.insert(known.end(), s.names.begin(), s.names.end());
      return Bad(path, absl::StrCat("unsupported tokenizer.ggml.pre \"", pre,
                                    "\" (supported: ", absl::StrJoin(known, ", "), ")"));
    }
    std::vector<PreTokenizerStep> steps;
    for (absl::string_view p : spec->patterns) {
      PreTokenizerStep step;
      step.kind = PreTokenizerStep::kSplit;
      ASSIGN_OR_RETURN(step.regex, Regex::Compile(p));
      steps.push_back(std::move(step));
    }
    state->pre_tokenizer = PreTokenizer(std::move(steps));
    opt.ignore_merges = spec->ignore_merges;
    add_bos = spec->add_bos;
    for (size_t i = 0; i < n; ++i) {
      std::string bytes;
      const bool plain = types[i] != kControl && types[i] != kUserDefined;
      if (plain && ByteLevelToBytes(tokens[i], &bytes)) {
        internal[i] = bytes;
        state->decoded[i] = bytes;
      } else {
        internal[i] = tokens[i];
        state->decoded[i] = tokens[i];
      }
    }
    ASSIGN_OR_RETURN(std::vector<std::string> raw_merges,
                     gguf->GetStringArray("tokenizer.ggml.merges"));
    merges.reserve(raw_merges.size());
    for (const std::string& m : raw_merges) {
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) return Bad(path, absl::StrCat("merge \"", m, "\" has no space"));
      std::string a, b;
      if (!ByteLevelToBytes(m.substr(0, sp), &a) || !ByteLevelToBytes(m.substr(sp + 1), &b)) {
        return Bad(path, absl::StrCat("merge \"", m, "\" is not byte-level text"));
      }
      merges.emplace_back(std::move(a), std::move(b));
    }
  } else {
    return Bad(path, absl::StrCat("unsupported tokenizer.ggml.model \"", *model_name,
                                  "\" (supported: llama, gpt2)"));
  }
  if (opt.unk_id < 0) {
    for (size_t i = 0; i < n; ++i) {
      if (types[i] == kUnknown) {
        opt.unk_id = static_cast<int32_t>(i);
        break;
      }
    }
  }
  if (opt.unk_id >= static_cast<int64_t>(n)) return Bad(path, "unknown token id out of range");

  // Control, user-defined and unknown tokens are matched as wholes in the input.
  for (size_t i = 0; i < n; ++i) {
    if ((types[i] == kControl || types[i] == kUserDefined || types[i] == kUnknown) &&
        !tokens[i].empty()) {
      AddedToken t;
      t.id = static_cast<int32_t>(i);
      t.content = tokens[i];
      t.special = types[i] != kUserDefined;
      state->added.push_back(std::move(t));
    }
  }
  {
    absl::StatusOr<std::unique_ptr<BpeModel>> m =
        BpeModel::Create(opt, std::move(internal), merges, std::move(scores));
    if (!m.ok()) return Bad(path, m.status().message());
    state->model = *std::move(m);
  }
  add_bos = bool_or("tokenizer.ggml.add_bos_token", add_bos);
  const int64_t bos = int_or("tokenizer.ggml.bos_token_id", -1);
  const int64_t eos = int_or("tokenizer.ggml.eos_token_id", -1);
  if (bos >= static_cast<int64_t>(n) || eos >= static_cast<int64_t>(n)) {
    return Bad(path, "BOS/EOS token id out of range");
  }
  state->bos_id = static_cast<int32_t>(bos);
  if (bos >= 0) state->bos_token = tokens[bos];
  if (eos >= 0) state->eos_token = tokens[eos];
  if (add_bos && bos >= 0) state->prefix_ids.push_back(state->bos_id);
  if (bool_or("tokenizer.ggml.add_eos_token", false) && eos >= 0) {
    state->suffix_ids.push_back(static_cast<int32_t>(eos));
  }
  for (absl::string_view key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                "tokenizer.ggml.eom_token_id"}) {
    const int64_t id = int_or(key, -1);
    if (id >= 0 && id < static_cast<int64_t>(n)) state->eos_ids.push_back(static_cast<int32_t>(id));
  }
  if (gguf->Has("tokenizer.chat_template")) {
    ASSIGN_OR_RETURN(state->chat_template, gguf->GetString("tokenizer.chat_template"));
  }
  if (absl::Status s = state->Finish(); !s.ok()) return Bad(path, s.message());
  return std::make_unique<Tokenizer>(std::move(state));
}

}  // namespace shardserve::tokenizer_internal
