// UTF-8 helpers for the tokenizer: validation with replacement, and an incremental decoder that
// turns a byte stream into valid UTF-8 the same way whether it is fed at once or piecewise.
//
// Invalid input follows the WHATWG / Unicode "maximal subpart" rule: each maximal prefix of a
// valid sequence that cannot be completed, and each stray byte, becomes one U+FFFD.
#ifndef SHARDSERVE_MODEL_TOKENIZER_UTF8_H_
#define SHARDSERVE_MODEL_TOKENIZER_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

namespace shardserve::utf8 {

inline constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Appends the UTF-8 encoding of `cp` (must be a Unicode scalar value).
void Append(char32_t cp, std::string* out);

// Length in bytes of the valid UTF-8 sequence at the start of `s`, or 0 if `s` does not start
// with a complete valid sequence. `*incomplete` (optional) is set when the bytes are a valid
// but unfinished prefix (more input could complete them).
size_t ValidSequenceLength(absl::string_view s, bool* incomplete = nullptr);

// True when `s` is entirely valid UTF-8.
bool IsValid(absl::string_view s);

// Returns `s` with every invalid part replaced by U+FFFD (maximal subpart rule).
std::string Sanitize(absl::string_view s);

// Appends to `out` the valid UTF-8 text for the longest prefix of `bytes` that is decidable now,
// replacing invalid parts with U+FFFD; returns how many bytes it consumed. A trailing valid but
// incomplete prefix is left unconsumed unless `final` is true (then it becomes one U+FFFD).
size_t DecodeLossy(absl::string_view bytes, bool final, std::string* out);

// Splits `s` (valid UTF-8) into code point lengths: calls f(offset, length) per character.
template <typename F>
void ForEachChar(absl::string_view s, F&& f) {
  size_t i = 0;
  while (i < s.size()) {
    size_t n = ValidSequenceLength(s.substr(i));
    if (n == 0) n = 1;
    f(i, n);
    i += n;
  }
}

}  // namespace shardserve::utf8

#endif  // SHARDSERVE_MODEL_TOKENIZER_UTF8_H_
