// Normalizers and pre-tokenizers of the Hugging Face `tokenizers` pipeline, in the subset that
// the served model families use (see tokenizer.h for the list).
//
// A Normalizer rewrites one text segment (the text between added tokens). A PreTokenizer turns a
// normalized segment into the words the model encodes one by one. Both are immutable after
// construction and safe to use from several threads.
#ifndef SHARDSERVE_MODEL_TOKENIZER_PRE_TOKENIZER_H_
#define SHARDSERVE_MODEL_TOKENIZER_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace shardserve::tokenizer_internal {

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available).
class Regex {
 public:
  static absl::StatusOr<std::shared_ptr<const Regex>> Compile(absl::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for each non-overlapping match in `text` (valid UTF-8), left to right.
  // Empty matches are skipped.
  template <typename F>
  void ForEachMatch(absl::string_view text, F&& f) const;
  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  // Returns false when there is no further match at or after `start`.
  bool Next(absl::string_view text, size_t start, void* match_data, size_t* begin,
            size_t* end) const;
  void* NewMatchData() const;
  static void FreeMatchData(void* md);
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
};

template <typename F>
void Regex::ForEachMatch(absl::string_view text, F&& f) const {
  void* md = NewMatchData();
  size_t pos = 0, b = 0, e = 0;
  while (pos <= text.size() && Next(text, pos, md, &b, &e)) {
    if (e > b) f(b, e);
    pos = e > b ? e : e + 1;
    // Never resume inside a UTF-8 character after an empty match.
    while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
  }
  FreeMatchData(md);
}

enum class NormalizerKind { kPrepend, kReplace, kNfc, kNfkc, kNfd, kNfkd, kLowercase };

struct NormalizerStep {
  NormalizerKind kind;
  std::string from;  // kReplace: literal pattern; kPrepend: unused
  std::string to;    // kReplace: replacement; kPrepend: the prefix
};

class Normalizer {
 public:
  explicit Normalizer(std::vector<NormalizerStep> steps) : steps_(std::move(steps)) {}
  bool empty() const { return steps_.empty(); }
  std::string Apply(absl::string_view text) const;

 private:
  std::vector<NormalizerStep> steps_;
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kDigits, kMetaspace, kWhitespaceSplit };
  Kind kind = kSplit;
  std::shared_ptr<const Regex> regex;  // kSplit; kByteLevel with use_regex
  std::string literal;                 // kSplit with a String pattern
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;   // kByteLevel
  bool individual_digits = false;  // kDigits
  std::string replacement;         // kMetaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;  // kMetaspace
};

class PreTokenizer {
 public:
  explicit PreTokenizer(std::vector<PreTokenizerStep> steps) : steps_(std::move(steps)) {}
  // Appends the words of `text` to `words`. `first_segment`: the text starts at the beginning of
  // the input (matters for Metaspace's "first" prepend scheme).
  void Split(absl::string_view text, bool first_segment, std::vector<std::string>* words) const;

 private:
  std::vector<PreTokenizerStep> steps_;
};

// The GPT-2 split pattern used by ByteLevel when use_regex is true.
inline constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace shardserve::tokenizer_internal

#endif  // SHARDSERVE_MODEL_TOKENIZER_PRE_TOKENIZER_H_
