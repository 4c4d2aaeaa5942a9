// Text <-> token ids for every served model family.
//
// Formats:
//   * Hugging Face tokenizer.json (+ tokenizer_config.json, generation_config.json when present):
//     model BPE, either byte-level (Llama-3, Qwen2/3, DeepSeek-V3/R1) or with byte_fallback and
//     the "▁" convention (Llama-2, Mistral, stories260K); merges as "a b" strings or ["a", "b"]
//     pairs; ignore_merges; normalizers NFC/NFKC/NFD/NFKD, Lowercase, Prepend, Replace (string
//     patterns), Sequence; pre-tokenizers Split (regex via PCRE2, or string), ByteLevel, Digits,
//     Metaspace, WhitespaceSplit, Sequence; TemplateProcessing / ByteLevel post-processors.
//   * GGUF vocabularies (`tokenizer.ggml.*`): model `llama` (SentencePiece: tokens, scores, token
//     types) and `gpt2` (byte-level BPE: tokens, merges) with `tokenizer.ggml.pre` naming the
//     split rules (llama-bpe/llama3, qwen2, deepseek-llm, deepseek-coder, deepseek-v3, gpt-2 and
//     a few aliases). Vocab-only files load.
//
// Encoding: added and special tokens that occur in the text are matched first (leftmost, longest)
// and never split; the rest is normalized, pre-tokenized and encoded word by word.
// Invalid UTF-8 in the input is replaced by U+FFFD (one per maximal invalid subpart) before
// encoding; Decode likewise turns token byte sequences that are not valid UTF-8 into U+FFFD, so
// both always produce valid UTF-8.
//
// Thread-safety: a loaded Tokenizer is immutable apart from an internal, locked word cache; all
// const methods may be called concurrently. A StreamingDecoder is for one thread at a time and
// must not outlive its Tokenizer. Nothing here throws.
#ifndef SHARDSERVE_MODEL_TOKENIZER_TOKENIZER_H_
#define SHARDSERVE_MODEL_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace shardserve {

namespace tokenizer_internal {
struct TokenizerState;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // path: a model folder (tokenizer.json [+ tokenizer_config.json]), a folder with only
  // tokenizer files, a tokenizer.json file, or a .gguf file (a folder without tokenizer.json but
  // with exactly one .gguf file loads that file). NOT_FOUND when nothing loadable is there;
  // INVALID_ARGUMENT naming the file and field for malformed or unsupported content.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);

  // add_bos: add what the tokenizer adds around a single sequence (the post-processor's
  // template, else BOS per add_bos_token). Special/added tokens in `text` are matched.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos = true) const;
  // Concatenates the tokens' text (byte-level / byte-fallback pieces become bytes) and applies
  // the decoder's leading-space rule; skip_special drops special tokens. Lossless on purpose:
  // tokenizer_config.json's clean_up_tokenization_spaces is not applied.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special = true) const;
  // The bytes `id` adds to decoded text, special tokens included (" hello" for "Ġhello",
  // " the" for "▁the", "\n" for "<0x0A>"); may be part of a UTF-8 character. "" for an unknown
  // id.
  std::string TokenText(int32_t id) const { return std::string(TokenBytes(id, false)); }
  // The raw vocabulary piece ("Ġhello", "▁the", "<0x0A>", "<|eot_id|>"); "" for an unknown id.
  std::string IdToPiece(int32_t id) const;
  // -1 when `piece` is neither a vocabulary piece nor an added token.
  int32_t PieceToId(absl::string_view piece) const;
  int32_t vocab_size() const;
  int32_t bos_id() const;                // -1 if none
  std::vector<int32_t> eos_ids() const;  // all end-of-generation ids, sorted
  bool IsSpecial(int32_t id) const;

  // Metadata that chat templates need: the Jinja source ("" if none) and the BOS/EOS texts.
  const std::string& chat_template() const;
  std::string bos_token() const;
  std::string eos_token() const;

  // Used by the loaders.
  explicit Tokenizer(std::unique_ptr<tokenizer_internal::TokenizerState> state);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

 private:
  friend class StreamingDecoder;
  // The bytes `id` contributes to decoded text ("" for skipped or unknown ids).
  absl::string_view TokenBytes(int32_t id, bool skip_special) const;
  bool strip_leading_space() const;
  void EncodeSegment(absl::string_view segment, bool first_segment,
                     std::vector<int32_t>* ids) const;

  std::unique_ptr<tokenizer_internal::TokenizerState> state_;
};

// Streaming detokenization: feed ids one at a time, get only complete UTF-8 text; the
// concatenation of all Add() outputs and Flush() equals Decode(all ids, skip_special).
class StreamingDecoder {
 public:
  // continuation: the ids follow text already shown (a completion after its prompt), so the
  // decoder's leading-space rule does not apply to the first one: "Once" + " upon", not "upon".
  StreamingDecoder(const Tokenizer& tok, bool skip_special = true, bool continuation = false);
  std::string Add(int32_t id);
  // Emits what is still held back (an unfinished character becomes U+FFFD) and resets.
  std::string Flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  bool continuation_;
  bool started_;
  std::string pending_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_TOKENIZER_TOKENIZER_H_
