// Context-free grammars over bytes for constrained decoding, parsed from a GBNF dialect (the
// notation of llama.cpp's grammars; docs/API.md lists what is accepted).
//
// A Grammar is a set of rules; each rule is a list of alternatives; each alternative is a
// sequence of elements, each a set of bytes or a reference to a rule, ended by kEnd. Character
// classes and `.` over code points become UTF-8 byte sequences, repetition (* + ? {m,n}) and
// groups become generated rules, so the matcher (grammar/matcher.h) sees bytes only. Parsing
// refuses what the matcher could not run: undefined rules, a missing `root`, left recursion
// (a rule that can reach itself before reading a byte), and grammars over kMaxElements.
//
// Immutable once built; share it between threads.
#ifndef SHARDSERVE_MODEL_GRAMMAR_GRAMMAR_H_
#define SHARDSERVE_MODEL_GRAMMAR_GRAMMAR_H_

#include <bitset>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shardserve::grammar {

struct Element {
  enum Kind : uint8_t { kEnd, kBytes, kRule };
  Kind kind = kEnd;
  uint32_t index = 0;  // kBytes: Grammar::byte_set(index); kRule: the rule
};

class Grammar {
 public:
  // Elements of all alternatives together, bounding memory and the work per byte.
  static constexpr int64_t kMaxElements = 1 << 20;
  // Largest repetition count in {m,n}.
  static constexpr int kMaxRepeat = 10000;
  // Nested groups, and rules nested before their first byte (bounds recursion).
  static constexpr int kMaxNesting = 256;

  // INVALID_ARGUMENT naming the line and column of the first problem.
  static absl::StatusOr<std::shared_ptr<const Grammar>> Parse(std::string_view text);

  uint32_t root() const { return root_; }
  const Element& element(uint32_t pos) const { return elements_[pos]; }
  // First elements of `rule`'s alternatives.
  const std::vector<uint32_t>& alternatives(uint32_t rule) const { return rules_[rule]; }
  const std::bitset<256>& byte_set(uint32_t index) const { return byte_sets_[index]; }
  // Fewest bytes that finish the alternative from element `pos` on (`pos` included).
  uint32_t min_rest(uint32_t pos) const { return min_rest_[pos]; }
  // Fewest bytes a whole output needs.
  uint32_t min_length() const { return rule_min_[root_]; }
  int64_t num_elements() const { return static_cast<int64_t>(elements_.size()); }
  int64_t num_rules() const { return static_cast<int64_t>(rules_.size()); }

 private:
  friend class GrammarBuilder;
  Grammar() = default;

  std::vector<Element> elements_;
  std::vector<std::vector<uint32_t>> rules_;
  std::vector<std::bitset<256>> byte_sets_;
  std::vector<uint32_t> min_rest_;
  std::vector<uint32_t> rule_min_;
  uint32_t root_ = 0;
};

// Quotes `bytes` as a GBNF string literal ("..." with \" \\ \n \r \t and \xHH for other control
// bytes; other bytes, UTF-8 included, as they are).
std::string GbnfLiteral(std::string_view bytes);

}  // namespace shardserve::grammar

#endif  // SHARDSERVE_MODEL_GRAMMAR_GRAMMAR_H_
