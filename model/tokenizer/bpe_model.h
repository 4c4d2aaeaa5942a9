// The word-level encoder behind every tokenizer here: byte-pair encoding, driven either by a
// ranked merge list (Hugging Face BPE, GGUF `gpt2`) or by piece scores (SentencePiece BPE as in
// GGUF `llama`).
//
// Vocabulary pieces are held in their "internal" form: raw bytes for byte-level vocabularies
// (the GPT-2 byte-to-unicode mapping is undone at load time), the text itself otherwise.
// EncodeWord is thread-safe; it memoises words in a mutex-guarded cache.
#ifndef SHARDSERVE_MODEL_TOKENIZER_BPE_MODEL_H_
#define SHARDSERVE_MODEL_TOKENIZER_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace shardserve::tokenizer_internal {

// GPT-2's reversible byte <-> printable code point mapping.
char32_t ByteToUnicode(uint8_t b);
// Converts a byte-level piece ("Ġhello") to its bytes (" hello"); false when some character is
// not in the mapping.
bool ByteLevelToBytes(absl::string_view piece, std::string* bytes);
// The inverse: raw bytes to the byte-level piece.
std::string BytesToByteLevel(absl::string_view bytes);

struct BpeOptions {
  bool byte_level = false;     // vocabulary pieces are GPT-2 byte-level strings
  bool byte_fallback = false;  // unknown characters become <0xXX> pieces
  bool ignore_merges = false;  // a word found whole in the vocabulary is one token
  bool fuse_unk = false;       // consecutive unknowns become one unk token
  bool use_scores = false;     // SentencePiece-style: merge the best-scoring pair
  int32_t unk_id = -1;
};

class BpeModel {
 public:
  // `pieces[id]` in internal form ("" for ids without a model piece, e.g. added tokens only).
  // `merges`: pairs of pieces in internal form, in rank order (ignored when use_scores).
  // `scores[id]`: required when use_scores.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      BpeOptions options, std::vector<std::string> pieces,
      const std::vector<std::pair<std::string, std::string>>& merges, std::vector<float> scores);

  // Appends the ids for one pre-tokenized word.
  void EncodeWord(absl::string_view word, std::vector<int32_t>* out) const;
  // -1 when absent.
  int32_t Find(absl::string_view piece) const;
  const BpeOptions& options() const { return options_; }
  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }

 private:
  struct Symbol {
    int32_t id;
    uint32_t begin, len;  // byte range in the word
    int32_t prev, next;
  };
  // Symbol `pos` absorbs the one after it and becomes `id`.
  static void JoinWithNext(std::vector<Symbol>& syms, int32_t pos, int32_t id);
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  BpeModel() = default;
  void EncodeUncached(absl::string_view word, std::vector<int32_t>* out) const;
  void InitialSymbols(absl::string_view word, std::vector<Symbol>* syms) const;
  void MergeByRank(std::vector<Symbol>* syms) const;
  void MergeByScore(absl::string_view word, std::vector<Symbol>* syms) const;
  void EmitSymbols(absl::string_view word, const std::vector<Symbol>& syms,
                   std::vector<int32_t>* out) const;

  BpeOptions options_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_;  // byte-level: the single-byte piece; else <0xXX>

  static constexpr size_t kMaxCachedWordBytes = 64;
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace shardserve::tokenizer_internal

#endif  // SHARDSERVE_MODEL_TOKENIZER_BPE_MODEL_H_
