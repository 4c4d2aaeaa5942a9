#include "model/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace shardserve::tokenizer_internal {

absl::StatusOr<std::shared_ptr<const Regex>> Regex::Compile(absl::string_view pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &err_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return absl::InvalidArgumentError(absl::StrCat("bad split regex at offset ", err_offset, ": ",
                                                   reinterpret_cast<const char*>(msg)));
  }
  // JIT is an optimisation: without it (unsupported platform) matching still works.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  std::shared_ptr<Regex> r(new Regex());
  r->pattern_ = std::string(pattern);
  r->code_ = code;
  return std::shared_ptr<const Regex>(std::move(r));
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void* Regex::NewMatchData() const {
  return pcre2_match_data_create_from_pattern(static_cast<pcre2_code*>(code_), nullptr);
}

void Regex::FreeMatchData(void* md) { pcre2_match_data_free(static_cast<pcre2_match_data*>(md)); }

bool Regex::Next(absl::string_view text, size_t start, void* match_data, size_t* begin,
                 size_t* end) const {
  auto* md = static_cast<pcre2_match_data*>(match_data);
  const int rc =
      pcre2_match(static_cast<pcre2_code*>(code_), reinterpret_cast<PCRE2_SPTR>(text.data()),
                  text.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
  if (rc < 0) return false;  // no match, or a resource limit: the rest stays one piece
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  *begin = ov[0];
  *end = ov[1];
  return true;
}

namespace {

std::string IcuNormalize(absl::string_view text, NormalizerKind kind) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (kind) {
    case NormalizerKind::kNfc:
      n = icu::Normalizer2::getNFCInstance(status);
      break;
    case NormalizerKind::kNfkc:
      n = icu::Normalizer2::getNFKCInstance(status);
      break;
    case NormalizerKind::kNfd:
      n = icu::Normalizer2::getNFDInstance(status);
      break;
    case NormalizerKind::kNfkd:
      n = icu::Normalizer2::getNFKDInstance(status);
      break;
    default:
      return std::string(text);
  }
  if (U_FAILURE(status) || n == nullptr) return std::string(text);
  bool ascii = true;
  for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(text);  // ASCII is invariant under every normalization form
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  icu::UnicodeString normalized = n->normalize(u, status);
  if (U_FAILURE(status)) return std::string(text);
  std::string out;
  normalized.toUTF8String(out);
  return out;
}

std::string Lowercase(absl::string_view text) {
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  u.toLower();
  std::string out;
  u.toUTF8String(out);
  return out;
}

struct Piece {
  size_t begin, end;
  bool match;
};

// Applies one Split-like step to `word`, given the matched ranges.
void Combine(absl::string_view word, const std::vector<Piece>& pieces, SplitBehavior behavior,
             std::vector<std::string>* out) {
  std::string pending;  // kMergedWithNext: matches waiting for the following piece
  for (size_t i = 0; i < pieces.size(); ++i) {
    const Piece& p = pieces[i];
    absl::string_view s = word.substr(p.begin, p.end - p.begin);
    switch (behavior) {
      case SplitBehavior::kIsolated:
        out->emplace_back(s);
        break;
      case SplitBehavior::kRemoved:
        if (!p.match) out->emplace_back(s);
        break;
      case SplitBehavior::kMergedWithPrevious:
        if (p.match && i > 0 && !pieces[i - 1].match) {
          out->back().append(s.data(), s.size());
        } else {
          out->emplace_back(s);
        }
        break;
      case SplitBehavior::kMergedWithNext:
        if (p.match) {
          if (!pending.empty()) out->push_back(std::move(pending));
          pending = std::string(s);
        } else {
          out->push_back(absl::StrCat(pending, s));
          pending.clear();
        }
        break;
      case SplitBehavior::kContiguous:
        if (p.match && i > 0 && pieces[i - 1].match) {
          out->back().append(s.data(), s.size());
        } else {
          out->emplace_back(s);
        }
        break;
    }
  }
  if (!pending.empty()) out->push_back(std::move(pending));
}

// Splits `word` into pieces alternating non-matches and matches of `find`.
template <typename FindAll>
std::vector<Piece> Partition(absl::string_view word, bool invert, FindAll&& find_all) {
  std::vector<Piece> pieces;
  size_t last = 0;
  find_all([&](size_t b, size_t e) {
    if (b > last) pieces.push_back({last, b, invert});
    pieces.push_back({b, e, !invert});
    last = e;
  });
  if (last < word.size()) pieces.push_back({last, word.size(), invert});
  return pieces;
}

bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

std::string Normalizer::Apply(absl::string_view text) const {
  std::string s(text);
  for (const NormalizerStep& step : steps_) {
    switch (step.kind) {
      case NormalizerKind::kPrepend:
        if (!s.empty()) s.insert(0, step.to);
        break;
      case NormalizerKind::kReplace:
        if (!step.from.empty()) s = absl::StrReplaceAll(s, {{step.from, step.to}});
        break;
      case NormalizerKind::kLowercase:
        s = Lowercase(s);
        break;
      default:
        s = IcuNormalize(s, step.kind);
        break;
    }
  }
  return s;
}

void PreTokenizer::Split(absl::string_view text, bool first_segment,
                         std::vector<std::string>* words) const {
  std::vector<std::string> cur;
  cur.emplace_back(text);
  std::vector<std::string> next;
  for (const PreTokenizerStep& step : steps_) {
    next.clear();
    for (size_t wi = 0; wi < cur.size(); ++wi) {
      std::string& word = cur[wi];
      if (word.empty()) continue;
      switch (step.kind) {
        case PreTokenizerStep::kSplit: {
          std::vector<Piece> pieces;
          if (step.regex != nullptr) {
            pieces = Partition(word, step.invert,
                               [&](auto&& emit) { step.regex->ForEachMatch(word, emit); });
          } else {
            pieces = Partition(word, step.invert, [&](auto&& emit) {
              if (step.literal.empty()) return;
              size_t pos = 0;
              while ((pos = word.find(step.literal, pos)) != std::string::npos) {
                emit(pos, pos + step.literal.size());
                pos += step.literal.size();
              }
            });
          }
          Combine(word, pieces, step.behavior, &next);
          break;
        }
        case PreTokenizerStep::kByteLevel: {
          if (step.add_prefix_space && word[0] != ' ') word.insert(0, " ");
          if (step.regex == nullptr) {
            next.push_back(std::move(word));
          } else {
            step.regex->ForEachMatch(
                word, [&](size_t b, size_t e) { next.emplace_back(word.substr(b, e - b)); });
          }
          break;
        }
        case PreTokenizerStep::kDigits: {
          std::vector<Piece> pieces;
          size_t i = 0;
          while (i < word.size()) {
            size_t j = i;
            const bool digit = IsAsciiDigit(word[i]);
            if (digit && step.individual_digits) {
              j = i + 1;
            } else {
              while (j < word.size() && IsAsciiDigit(word[j]) == digit) ++j;
            }
            pieces.push_back({i, j, digit});
            i = j;
          }
          Combine(word, pieces, SplitBehavior::kIsolated, &next);
          break;
        }
        case PreTokenizerStep::kMetaspace: {
          std::string s = absl::StrReplaceAll(word, {{" ", step.replacement}});
          const bool prepend =
              step.prepend_scheme == PrependScheme::kAlways ||
              (step.prepend_scheme == PrependScheme::kFirst && first_segment && wi == 0);
          if (prepend && s.compare(0, step.replacement.size(), step.replacement) != 0) {
            s.insert(0, step.replacement);
          }
          if (!step.split) {
            next.push_back(std::move(s));
            break;
          }
          std::vector<Piece> pieces = Partition(s, false, [&](auto&& emit) {
            size_t pos = 0;
            while ((pos = s.find(step.replacement, pos)) != std::string::npos) {
              emit(pos, pos + step.replacement.size());
              pos += step.replacement.size();
            }
          });
          Combine(s, pieces, SplitBehavior::kMergedWithNext, &next);
          break;
        }
        case PreTokenizerStep::kWhitespaceSplit: {
          size_t i = 0;
          while (i < word.size()) {
            while (i < word.size() && std::isspace(static_cast<unsigned char>(word[i]))) ++i;
            size_t j = i;
            while (j < word.size() && !std::isspace(static_cast<unsigned char>(word[j]))) ++j;
            if (j > i) next.emplace_back(word.substr(i, j - i));
            i = j;
          }
          break;
        }
      }
    }
    cur.swap(next);
  }
  for (std::string& w : cur) {
    if (!w.empty()) words->push_back(std::move(w));
  }
}

}  // namespace shardserve::tokenizer_internal
