// Loads Hugging Face tokenizer.json (+ tokenizer_config.json, generation_config.json).
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_state.h"
#include "nlohmann/json.hpp"

namespace shardserve::tokenizer_internal {
namespace {

using Json = nlohmann::json;

// Errors carry the file name and the JSON path of the offending field.
class Context {
 public:
  explicit Context(std::string file) : file_(std::move(file)) {}
  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": ", field, ": ", what));
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

std::string StringOr(const Json& j, const char* key, std::string fallback) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return fallback;
  return it->get<std::string>();
}

bool BoolOr(const Json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_boolean()) return fallback;
  return it->get<bool>();
}

// A token id: an integer in [0, 2^24); -1 for anything else (floats, negatives, huge values).
int32_t IdValue(const Json& j) {
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    return v < (1u << 24) ? static_cast<int32_t>(v) : -1;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    return v >= 0 && v < (1 << 24) ? static_cast<int32_t>(v) : -1;
  }
  return -1;
}

// A token given as "text" or {"content": "text", ...} (tokenizer_config.json style).
std::string TokenText(const Json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object()) return StringOr(j, "content", "");
  return "";
}

absl::Status ParseNormalizer(const Context& ctx, const Json& j, std::vector<NormalizerStep>* out) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = StringOr(j, "type", "");
  if (type == "Sequence") {
    for (const Json& n : j.at("normalizers")) RETURN_IF_ERROR(ParseNormalizer(ctx, n, out));
  } else if (type == "Prepend") {
    out->push_back({NormalizerKind::kPrepend, "", j.at("prepend").get<std::string>()});
  } else if (type == "Replace") {
    const Json& pattern = j.at("pattern");
    if (!pattern.contains("String")) {
      return ctx.Error("normalizer.Replace.pattern", "only String patterns are supported");
    }
    out->push_back({NormalizerKind::kReplace, pattern.at("String").get<std::string>(),
                    j.at("content").get<std::string>()});
  } else if (type == "NFC") {
    out->push_back({NormalizerKind::kNfc, "", ""});
  } else if (type == "NFKC") {
    out->push_back({NormalizerKind::kNfkc, "", ""});
  } else if (type == "NFD") {
    out->push_back({NormalizerKind::kNfd, "", ""});
  } else if (type == "NFKD") {
    out->push_back({NormalizerKind::kNfkd, "", ""});
  } else if (type == "Lowercase") {
    out->push_back({NormalizerKind::kLowercase, "", ""});
  } else {
    return ctx.Error("normalizer.type", absl::StrCat("unsupported normalizer \"", type, "\""));
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitBehavior> ParseBehavior(const Context& ctx, const std::string& b) {
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return ctx.Error("pre_tokenizer.Split.behavior", absl::StrCat("unknown behavior \"", b, "\""));
}

absl::Status ParsePreTokenizer(const Context& ctx, const Json& j,
                               std::vector<PreTokenizerStep>* out, bool* byte_level) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = StringOr(j, "type", "");
  PreTokenizerStep step;
  if (type == "Sequence") {
    for (const Json& p : j.at("pretokenizers")) {
      RETURN_IF_ERROR(ParsePreTokenizer(ctx, p, out, byte_level));
    }
    return absl::OkStatus();
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::kSplit;
    const Json& pattern = j.at("pattern");
    if (pattern.contains("Regex")) {
      absl::StatusOr<std::shared_ptr<const Regex>> re =
          Regex::Compile(pattern.at("Regex").get<std::string>());
      if (!re.ok()) return ctx.Error("pre_tokenizer.Split.pattern", re.status().message());
      step.regex = *std::move(re);
    } else {
      step.literal = pattern.at("String").get<std::string>();
    }
    ASSIGN_OR_RETURN(step.behavior, ParseBehavior(ctx, StringOr(j, "behavior", "Isolated")));
    step.invert = BoolOr(j, "invert", false);
  } else if (type == "ByteLevel") {
    *byte_level = true;
    step.kind = PreTokenizerStep::kByteLevel;
    step.add_prefix_space = BoolOr(j, "add_prefix_space", true);
    if (BoolOr(j, "use_regex", true)) {
      ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern));
    }
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::kDigits;
    step.individual_digits = BoolOr(j, "individual_digits", false);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::kMetaspace;
    step.replacement = StringOr(j, "replacement", "\xE2\x96\x81");
    const std::string scheme =
        StringOr(j, "prepend_scheme", BoolOr(j, "add_prefix_space", true) ? "always" : "never");
    step.prepend_scheme = scheme == "first"   ? PrependScheme::kFirst
                          : scheme == "never" ? PrependScheme::kNever
                                              : PrependScheme::kAlways;
    step.split = BoolOr(j, "split", true);
  } else if (type == "WhitespaceSplit") {
    step.kind = PreTokenizerStep::kWhitespaceSplit;
  } else {
    return ctx.Error("pre_tokenizer.type",
                     absl::StrCat("unsupported pre-tokenizer \"", type, "\""));
  }
  out->push_back(std::move(step));
  return absl::OkStatus();
}

struct DecoderSpec {
  bool byte_level = false;
  bool byte_fallback = false;
  std::vector<std::pair<std::string, std::string>> replace;
  bool strip_leading_space = false;
};

absl::Status ParseDecoder(const Context& ctx, const Json& j, DecoderSpec* d) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = StringOr(j, "type", "");
  if (type == "Sequence") {
    for (const Json& x : j.at("decoders")) RETURN_IF_ERROR(ParseDecoder(ctx, x, d));
  } else if (type == "ByteLevel") {
    d->byte_level = true;
  } else if (type == "ByteFallback") {
    d->byte_fallback = true;
  } else if (type == "Replace") {
    const Json& pattern = j.at("pattern");
    if (!pattern.contains("String")) {
      return ctx.Error("decoder.Replace.pattern", "only String patterns are supported");
    }
    d->replace.emplace_back(pattern.at("String").get<std::string>(),
                            j.at("content").get<std::string>());
  } else if (type == "Strip") {
    auto start = j.find("start");
    if (StringOr(j, "content", " ") == " " && start != j.end() && IdValue(*start) > 0) {
      d->strip_leading_space = true;
    }
  } else if (type == "Metaspace") {
    const std::string rep = StringOr(j, "replacement", "\xE2\x96\x81");
    d->replace.emplace_back(rep, " ");
    const std::string scheme =
        StringOr(j, "prepend_scheme", BoolOr(j, "add_prefix_space", true) ? "always" : "never");
    d->strip_leading_space = scheme != "never";
  } else if (type == "Fuse") {
    // Decode concatenates anyway.
  } else {
    return ctx.Error("decoder.type", absl::StrCat("unsupported decoder \"", type, "\""));
  }
  return absl::OkStatus();
}

std::string DecodePiece(const DecoderSpec& d, const std::string& piece) {
  std::string bytes;
  if (d.byte_level && ByteLevelToBytes(piece, &bytes)) return bytes;
  if (d.byte_fallback) {
    const int b = ByteFallbackValue(piece);
    if (b >= 0) return std::string(1, static_cast<char>(b));
  }
  bytes = piece;
  for (const auto& [from, to] : d.replace) {
    if (from.empty()) continue;
    std::string r;
    size_t pos = 0, hit;
    while ((hit = bytes.find(from, pos)) != std::string::npos) {
      r.append(bytes, pos, hit - pos).append(to);
      pos = hit + from.size();
    }
    r.append(bytes, pos);
    bytes = std::move(r);
  }
  return bytes;
}

absl::Status ParsePostProcessor(const Context& ctx, const Json& j, TokenizerState* s,
                                bool* has_template) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = StringOr(j, "type", "");
  if (type == "Sequence") {
    for (const Json& p : j.at("processors")) {
      RETURN_IF_ERROR(ParsePostProcessor(ctx, p, s, has_template));
    }
  } else if (type == "TemplateProcessing") {
    *has_template = true;
    const Json& specials = j.value("special_tokens", Json::object());
    bool after_sequence = false;
    for (const Json& item : j.at("single")) {
      if (item.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      auto it = specials.find(name);
      if (it == specials.end()) {
        return ctx.Error("post_processor.special_tokens",
                         absl::StrCat("template names unknown token \"", name, "\""));
      }
      for (const Json& id : it->at("ids")) {
        const int32_t v = IdValue(id);
        if (v < 0) return ctx.Error("post_processor.special_tokens", "bad id");
        (after_sequence ? s->suffix_ids : s->prefix_ids).push_back(v);
      }
    }
  }
  // ByteLevel, RobertaProcessing etc. add nothing we need for single sequences.
  return absl::OkStatus();
}

// A vocabulary piece in the model's internal form (bytes, for byte-level vocabularies).
std::string InternalPiece(const std::string& piece, bool byte_level) {
  std::string bytes;
  if (byte_level && ByteLevelToBytes(piece, &bytes)) return bytes;
  return piece;
}

// model.vocab as pieces by id; ids must lie below `id_limit` (they size per-id tables).
absl::StatusOr<std::vector<std::string>> ParseVocab(const Context& ctx, const Json& vocab,
                                                    int64_t id_limit) {
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int64_t id = IdValue(it.value());
    if (id < 0 || id >= id_limit) {
      return ctx.Error("model.vocab",
                       absl::StrCat("id ", id, " of \"", it.key(), "\" is out of range"));
    }
    max_id = std::max(max_id, id);
  }
  std::vector<std::string> raw(max_id + 1);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) raw[IdValue(it.value())] = it.key();
  return raw;
}

// model.merges, in both forms ("a b" strings and [a, b] pairs), as internal pieces.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseMerges(const Context& ctx,
                                                                             const Json& model,
                                                                             bool byte_level) {
  std::vector<std::pair<std::string, std::string>> merges;
  if (!model.contains("merges")) return merges;
  const Json& jm = model.at("merges");
  merges.reserve(jm.size());
  for (const Json& m : jm) {
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) {
        return ctx.Error("model.merges", absl::StrCat("merge \"", s, "\" has no space"));
      }
      merges.emplace_back(InternalPiece(s.substr(0, sp), byte_level),
                          InternalPiece(s.substr(sp + 1), byte_level));
    } else if (m.is_array() && m.size() == 2) {
      merges.emplace_back(InternalPiece(m[0].get<std::string>(), byte_level),
                          InternalPiece(m[1].get<std::string>(), byte_level));
    } else {
      return ctx.Error("model.merges", "entries must be \"a b\" strings or [a, b] pairs");
    }
  }
  return merges;
}

absl::Status ParseAddedTokens(const Context& ctx, const Json& tj, int64_t id_limit,
                              TokenizerState* state) {
  if (!tj.contains("added_tokens") || tj.at("added_tokens").is_null()) return absl::OkStatus();
  for (const Json& a : tj.at("added_tokens")) {
    AddedToken t;
    t.id = IdValue(a.at("id"));
    t.content = a.at("content").get<std::string>();
    t.special = BoolOr(a, "special", false);
    t.lstrip = BoolOr(a, "lstrip", false);
    t.rstrip = BoolOr(a, "rstrip", false);
    if (t.id < 0 || t.id >= id_limit || t.content.empty()) {
      return ctx.Error("added_tokens", absl::StrCat("bad entry for id ", t.id));
    }
    state->added.push_back(std::move(t));
  }
  return absl::OkStatus();
}

// tokenizer_config.json (BOS/EOS, the chat template) and generation_config.json's EOS ids.
void ApplyTokenizerConfig(const Json& config, const Json& generation, const Json& vocab,
                          const std::vector<std::string>& raw, bool has_template,
                          TokenizerState* state) {
  auto id_of = [&](const std::string& text) -> int32_t {
    if (text.empty()) return -1;
    for (const AddedToken& t : state->added) {
      if (t.content == text) return t.id;
    }
    auto it = vocab.find(text);
    return it == vocab.end() ? -1 : IdValue(*it);
  };
  if (config.is_object()) {
    state->bos_token = TokenText(config.value("bos_token", Json()));
    state->eos_token = TokenText(config.value("eos_token", Json()));
    const Json& ct = config.value("chat_template", Json());
    if (ct.is_string()) {
      state->chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const Json& e : ct) {
        if (StringOr(e, "name", "") == "default")
          state->chat_template = StringOr(e, "template", "");
      }
    }
  }
  state->bos_id = id_of(state->bos_token);
  if (state->bos_id < 0 && !state->prefix_ids.empty()) state->bos_id = state->prefix_ids[0];
  if (state->bos_token.empty() && state->bos_id >= 0)
    state->bos_token = raw.size() > size_t(state->bos_id) ? raw[state->bos_id] : "";
  const int32_t eos = id_of(state->eos_token);
  if (eos >= 0) state->eos_ids.push_back(eos);
  if (!has_template && config.is_object()) {
    const bool add_bos = BoolOr(config, "add_bos_token", !state->bos_token.empty());
    if (add_bos && state->bos_id >= 0) state->prefix_ids.push_back(state->bos_id);
    if (BoolOr(config, "add_eos_token", false) && eos >= 0) state->suffix_ids.push_back(eos);
  }
  if (generation.is_object() && generation.contains("eos_token_id")) {
    const Json& e = generation.at("eos_token_id");
    if (IdValue(e) >= 0) state->eos_ids.push_back(IdValue(e));
    if (e.is_array()) {
      for (const Json& x : e) {
        if (IdValue(x) >= 0) state->eos_ids.push_back(IdValue(x));
      }
    }
  }
}

// `section` names the part being read, for errors raised as JSON exceptions.
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseImpl(const Context& ctx, const Json& tj,
                                                     const Json& config, const Json& generation,
                                                     std::string* section) {
  auto state = std::make_unique<TokenizerState>();
  *section = "model";
  const Json& model = tj.at("model");
  const std::string model_type = StringOr(model, "type", "BPE");
  if (model_type != "BPE") {
    return ctx.Error("model.type",
                     absl::StrCat("unsupported model \"", model_type, "\" (supported: BPE)"));
  }
  if (!StringOr(model, "continuing_subword_prefix", "").empty() ||
      !StringOr(model, "end_of_word_suffix", "").empty()) {
    return ctx.Error("model", "continuing_subword_prefix / end_of_word_suffix are not supported");
  }

  *section = "normalizer";
  std::vector<NormalizerStep> norm_steps;
  RETURN_IF_ERROR(ParseNormalizer(ctx, tj.value("normalizer", Json()), &norm_steps));
  *section = "pre_tokenizer";
  std::vector<PreTokenizerStep> pre_steps;
  bool byte_level = false;
  RETURN_IF_ERROR(
      ParsePreTokenizer(ctx, tj.value("pre_tokenizer", Json()), &pre_steps, &byte_level));
  *section = "decoder";
  DecoderSpec decoder;
  RETURN_IF_ERROR(ParseDecoder(ctx, tj.value("decoder", Json()), &decoder));
  byte_level = byte_level || decoder.byte_level;
  state->normalizer = Normalizer(std::move(norm_steps));
  state->pre_tokenizer = PreTokenizer(std::move(pre_steps));
  state->strip_leading_space = decoder.strip_leading_space;

  // Vocabulary.
  *section = "model.vocab";
  const Json& vocab = model.at("vocab");
  if (!vocab.is_object()) return ctx.Error("model.vocab", "not an object");
  // Ids may leave holes, but not absurd ones: they size per-id tables.
  const Json& added_json = tj.value("added_tokens", Json::array());
  const int64_t id_limit =
      static_cast<int64_t>(vocab.size() + (added_json.is_array() ? added_json.size() : 0)) + 65536;
  ASSIGN_OR_RETURN(std::vector<std::string> raw, ParseVocab(ctx, vocab, id_limit));
  std::vector<std::string> internal_pieces(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) internal_pieces[i] = InternalPiece(raw[i], byte_level);
  *section = "model.merges";
  ASSIGN_OR_RETURN(auto merges, ParseMerges(ctx, model, byte_level));

  BpeOptions opt;
  opt.byte_level = byte_level;
  opt.byte_fallback = BoolOr(model, "byte_fallback", false);
  opt.ignore_merges = BoolOr(model, "ignore_merges", false);
  opt.fuse_unk = BoolOr(model, "fuse_unk", false);
  const std::string unk = StringOr(model, "unk_token", "");
  if (!unk.empty()) {
    auto it = vocab.find(unk);
    if (it == vocab.end()) return ctx.Error("model.unk_token", "not in the vocabulary");
    opt.unk_id = IdValue(*it);
  }
  {
    absl::StatusOr<std::unique_ptr<BpeModel>> m =
        BpeModel::Create(opt, std::move(internal_pieces), merges, {});
    if (!m.ok()) return ctx.Error("model", m.status().message());
    state->model = *std::move(m);
  }
  state->pieces = raw;
  state->decoded.resize(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) state->decoded[i] = DecodePiece(decoder, raw[i]);

  // Added tokens.
  *section = "added_tokens";
  RETURN_IF_ERROR(ParseAddedTokens(ctx, tj, id_limit, state.get()));

  *section = "post_processor";
  bool has_template = false;
  RETURN_IF_ERROR(
      ParsePostProcessor(ctx, tj.value("post_processor", Json()), state.get(), &has_template));

  *section = "tokenizer_config.json";
  ApplyTokenizerConfig(config, generation, vocab, raw, has_template, state.get());
  if (absl::Status s = state->Finish(); !s.ok()) return ctx.Error("tokenizer", s.message());
  return std::make_unique<Tokenizer>(std::move(state));
}

absl::StatusOr<Json> ParseJson(absl::string_view text, const std::string& name) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(name, ": not valid JSON"));
  return j;
}

}  // namespace

int ByteFallbackValue(absl::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(absl::string_view tokenizer_json,
                                                            absl::string_view config_json,
                                                            absl::string_view generation_json,
                                                            const std::string& name) {
  ASSIGN_OR_RETURN(Json tj, ParseJson(tokenizer_json, name));
  Json config, generation;
  if (!config_json.empty()) {
    ASSIGN_OR_RETURN(config, ParseJson(config_json, "tokenizer_config.json"));
  }
  if (!generation_json.empty()) {
    ASSIGN_OR_RETURN(generation, ParseJson(generation_json, "generation_config.json"));
  }
  Context ctx(name);
  if (!tj.is_object()) return ctx.Error("(root)", "not a JSON object");
  std::string section = "(root)";
  try {
    return ParseImpl(ctx, tj, config, generation, &section);
  } catch (const Json::exception& e) {
    return ctx.Error(section, absl::StrCat("malformed: ", e.what()));
  } catch (const std::exception& e) {
    return ctx.Error(section, absl::StrCat("cannot load: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir,
                                                           const std::string& json_path) {
  namespace fs = std::filesystem;
  ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFileToString(json_path));
  std::string config, generation;
  std::error_code ec;
  const fs::path config_path = fs::path(dir) / "tokenizer_config.json";
  if (fs::exists(config_path, ec)) {
    ASSIGN_OR_RETURN(config, ReadFileToString(config_path.string()));
  }
  const fs::path generation_path = fs::path(dir) / "generation_config.json";
  if (fs::exists(generation_path, ec)) {
    ASSIGN_OR_RETURN(generation, ReadFileToString(generation_path.string()));
  }
  return ParseHfTokenizer(tokenizer_json, config, generation, json_path);
}

}  // namespace shardserve::tokenizer_internal
