#include "model/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer/tokenizer_state.h"
#include "model/tokenizer/utf8.h"

namespace shardserve {

using tokenizer_internal::AddedToken;
using tokenizer_internal::TokenizerState;

namespace tokenizer_internal {

absl::Status TokenizerState::Finish() {
  int32_t size = model != nullptr ? model->size() : 0;
  size = std::max<int32_t>(size, static_cast<int32_t>(pieces.size()));
  for (const AddedToken& t : added) {
    if (t.id < 0) return absl::InvalidArgumentError("added token with a negative id");
    if (t.content.empty()) return absl::InvalidArgumentError("added token with empty content");
    size = std::max(size, t.id + 1);
  }
  pieces.resize(size);
  decoded.resize(size);
  special.assign(size, 0);
  for (const AddedToken& t : added) {
    if (pieces[t.id].empty()) pieces[t.id] = t.content;
    decoded[t.id] = t.content;
    special[t.id] = t.special;
    added_to_id.emplace(t.content, t.id);
  }
  for (auto& v : added_by_first_byte) v.clear();
  for (size_t i = 0; i < added.size(); ++i) {
    added_by_first_byte[static_cast<uint8_t>(added[i].content[0])].push_back(
        static_cast<int32_t>(i));
  }
  for (auto& v : added_by_first_byte) {
    std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) {
      return added[a].content.size() > added[b].content.size();
    });
  }
  for (int32_t id : prefix_ids) {
    if (id < 0 || id >= size) return absl::InvalidArgumentError("post-processor id out of range");
  }
  for (int32_t id : suffix_ids) {
    if (id < 0 || id >= size) return absl::InvalidArgumentError("post-processor id out of range");
  }
  if (bos_id >= size) return absl::InvalidArgumentError("BOS id out of range");
  // End-of-generation tokens: the configured ones plus the well-known end-of-turn names.
  static constexpr absl::string_view kEndNames[] = {
      "<|eot_id|>",    "<|eom_id|>", "<|end_of_text|>",       "<|im_end|>",
      "<|endoftext|>", "</s>",       "<｜end▁of▁sentence｜>", "<end_of_turn>",
      "<|end|>"};
  for (absl::string_view name : kEndNames) {
    auto it = added_to_id.find(name);
    if (it != added_to_id.end()) eos_ids.push_back(it->second);
  }
  std::vector<int32_t> valid;
  for (int32_t id : eos_ids) {
    if (id >= 0 && id < size) valid.push_back(id);
  }
  std::sort(valid.begin(), valid.end());
  valid.erase(std::unique(valid.begin(), valid.end()), valid.end());
  eos_ids = std::move(valid);
  return absl::OkStatus();
}

}  // namespace tokenizer_internal

Tokenizer::Tokenizer(std::unique_ptr<TokenizerState> state) : state_(std::move(state)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return absl::NotFoundError(absl::StrCat("tokenizer path not found: ", path));
  }
  if (fs::is_directory(st)) {
    const fs::path json = fs::path(path) / "tokenizer.json";
    if (fs::exists(json, ec)) return tokenizer_internal::LoadHfTokenizer(path, json.string());
    std::vector<fs::path> ggufs;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.path().extension() == ".gguf") ggufs.push_back(entry.path());
    }
    if (ggufs.size() == 1) return tokenizer_internal::LoadGgufTokenizer(ggufs[0].string());
    return absl::NotFoundError(
        absl::StrCat("no tokenizer in ", path,
                     ggufs.empty() ? ": expected tokenizer.json or a .gguf file"
                                   : ": no tokenizer.json and several .gguf files (name one)"));
  }
  if (absl::EndsWith(path, ".json")) {
    return tokenizer_internal::LoadHfTokenizer(fs::path(path).parent_path().string(), path);
  }
  return tokenizer_internal::LoadGgufTokenizer(path);
}

void Tokenizer::EncodeSegment(absl::string_view segment, bool first_segment,
                              std::vector<int32_t>* ids) const {
  if (segment.empty()) return;
  std::string normalized;
  if (!state_->normalizer.empty()) {
    normalized = state_->normalizer.Apply(segment);
    segment = normalized;
  }
  std::vector<std::string> words;
  state_->pre_tokenizer.Split(segment, first_segment, &words);
  for (const std::string& w : words) state_->model->EncodeWord(w, ids);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view input, bool add_bos) const {
  absl::string_view text(input.data(), input.size());
  std::string sanitized;
  if (!utf8::IsValid(text)) {
    sanitized = utf8::Sanitize(text);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos) ids.insert(ids.end(), state_->prefix_ids.begin(), state_->prefix_ids.end());

  size_t seg_begin = 0;  // start of the pending plain-text segment
  bool first_segment = true;
  size_t i = 0;
  while (i < text.size()) {
    const auto& candidates = state_->added_by_first_byte[static_cast<uint8_t>(text[i])];
    const AddedToken* match = nullptr;
    for (int32_t idx : candidates) {
      const AddedToken& t = state_->added[idx];
      if (text.compare(i, t.content.size(), t.content) == 0) {
        match = &t;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    size_t seg_end = i;
    if (match->lstrip) {
      while (seg_end > seg_begin && std::isspace(static_cast<unsigned char>(text[seg_end - 1]))) {
        --seg_end;
      }
    }
    EncodeSegment(text.substr(seg_begin, seg_end - seg_begin), first_segment, &ids);
    first_segment = false;
    ids.push_back(match->id);
    i += match->content.size();
    if (match->rstrip) {
      while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    }
    seg_begin = i;
  }
  EncodeSegment(text.substr(seg_begin), first_segment, &ids);
  if (add_bos) ids.insert(ids.end(), state_->suffix_ids.begin(), state_->suffix_ids.end());
  return ids;
}

absl::string_view Tokenizer::TokenBytes(int32_t id, bool skip_special) const {
  if (id < 0 || id >= vocab_size()) return {};
  if (skip_special && state_->special[id]) return {};
  return state_->decoded[id];
}

bool Tokenizer::strip_leading_space() const { return state_->strip_leading_space; }

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    const absl::string_view b = TokenBytes(id, skip_special);
    bytes.append(b.data(), b.size());
  }
  if (state_->strip_leading_space && !bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
  std::string out;
  out.reserve(bytes.size());
  utf8::DecodeLossy(bytes, /*final=*/true, &out);
  return out;
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return state_->pieces[id];
}

int32_t Tokenizer::PieceToId(absl::string_view piece) const {
  auto it = state_->added_to_id.find(piece);
  if (it != state_->added_to_id.end()) return it->second;
  for (int32_t id = 0; id < vocab_size(); ++id) {
    if (state_->pieces[id] == piece) return id;
  }
  return -1;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(state_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return state_->bos_id; }
std::vector<int32_t> Tokenizer::eos_ids() const { return state_->eos_ids; }
bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && state_->special[id];
}
const std::string& Tokenizer::chat_template() const { return state_->chat_template; }
std::string Tokenizer::bos_token() const { return state_->bos_token; }
std::string Tokenizer::eos_token() const { return state_->eos_token; }

StreamingDecoder::StreamingDecoder(const Tokenizer& tok, bool skip_special, bool continuation)
    : tok_(tok), skip_special_(skip_special), continuation_(continuation), started_(continuation) {}

std::string StreamingDecoder::Add(int32_t id) {
  absl::string_view bytes = tok_.TokenBytes(id, skip_special_);
  if (bytes.empty()) return {};
  if (!started_) {
    started_ = true;
    if (tok_.strip_leading_space() && bytes[0] == ' ') bytes.remove_prefix(1);
  }
  pending_.append(bytes.data(), bytes.size());
  std::string out;
  const size_t used = utf8::DecodeLossy(pending_, /*final=*/false, &out);
  pending_.erase(0, used);
  return out;
}

std::string StreamingDecoder::Flush() {
  std::string out;
  utf8::DecodeLossy(pending_, /*final=*/true, &out);
  pending_.clear();
  started_ = continuation_;
  return out;
}

}  // namespace shardserve
