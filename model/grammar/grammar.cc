#include "model/grammar/grammar.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/tokenizer/utf8.h"

namespace shardserve::grammar {
namespace {

constexpr uint32_t kInfinite = std::numeric_limits<uint32_t>::max();
constexpr uint32_t kMaxCodePoint = 0x10FFFF;

uint32_t AddSat(uint32_t a, uint32_t b) { return a >= kInfinite - b ? kInfinite : a + b; }

// A parsed expression.
struct Node {
  enum Kind { kLiteral, kClass, kRef, kSeq, kAlt, kRepeat };
  Kind kind = kSeq;
  std::string bytes;                                  // kLiteral
  std::vector<std::pair<uint32_t, uint32_t>> ranges;  // kClass: code point ranges, inclusive
  std::string name;                                   // kRef
  std::vector<Node> children;                         // kSeq, kAlt, kRepeat (one)
  int min = 0;
  int max = -1;  // kRepeat; -1: unbounded
  int line = 0;
  int column = 0;
};

void AppendUtf8(uint32_t cp, std::string* out) { utf8::Append(static_cast<char32_t>(cp), out); }

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  absl::Status Run(std::vector<std::pair<std::string, Node>>* rules) {
    SkipSpace();
    while (!AtEnd()) {
      const int line = line_, column = Column();
      std::string name = Ident();
      if (name.empty()) return Error("expected a rule name");
      SkipSpace();
      if (!Consume("::="))
        return Error(absl::StrCat("expected '::=' after rule name '", name, "'"));
      SkipSpace();
      Node body;
      if (absl::Status s = Alternatives(&body); !s.ok()) return s;
      body.line = line;
      body.column = column;
      rules->emplace_back(std::move(name), std::move(body));
      SkipSpace();
    }
    if (rules->empty()) return Error("the grammar has no rules");
    return absl::OkStatus();
  }

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("grammar line ", line_, ", column ", Column(), ": ", what));
  }

 private:
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek(size_t ahead = 0) const {
    return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : '\0';
  }
  int Column() const { return static_cast<int>(pos_ - line_start_) + 1; }
  void Advance() {
    if (text_[pos_] == '\n') {
      ++line_;
      line_start_ = pos_ + 1;
    }
    ++pos_;
  }
  bool Consume(std::string_view s) {
    if (text_.substr(pos_, s.size()) != s) return false;
    for (size_t i = 0; i < s.size(); ++i) Advance();
    return true;
  }
  void SkipSpace() {
    while (!AtEnd()) {
      const char c = Peek();
      if (c == '#') {
        while (!AtEnd() && Peek() != '\n') Advance();
      } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        Advance();
      } else {
        break;
      }
    }
  }
  static bool IdentChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  }
  std::string Ident() {
    std::string out;
    while (!AtEnd() && IdentChar(Peek())) {
      out.push_back(Peek());
      Advance();
    }
    return out;
  }
  // Whether a rule definition (`name ::=`) starts here: the end of the current rule's body.
  bool AtRuleStart() const {
    size_t p = pos_;
    while (p < text_.size() && IdentChar(text_[p])) ++p;
    if (p == pos_) return false;
    while (p < text_.size() &&
           (text_[p] == ' ' || text_[p] == '\t' || text_[p] == '\n' || text_[p] == '\r')) {
      ++p;
    }
    return text_.substr(p, 3) == "::=";
  }

  absl::Status Alternatives(Node* out) {
    out->kind = Node::kAlt;
    for (;;) {
      Node seq;
      if (absl::Status s = Sequence(&seq); !s.ok()) return s;
      out->children.push_back(std::move(seq));
      SkipSpace();
      if (Peek() != '|') break;
      Advance();
      SkipSpace();
    }
    return absl::OkStatus();
  }

  absl::Status Sequence(Node* out) {
    out->kind = Node::kSeq;
    for (;;) {
      SkipSpace();
      if (AtEnd() || Peek() == '|' || Peek() == ')' || AtRuleStart()) return absl::OkStatus();
      Node item;
      item.line = line_;
      item.column = Column();
      const char c = Peek();
      if (c == '"') {
        Advance();
        item.kind = Node::kLiteral;
        for (;;) {
          if (AtEnd()) return Error("unterminated string literal");
          if (Peek() == '"') break;
          if (Peek() == '\n') return Error("newline in a string literal (write \\n)");
          uint32_t cp;
          bool escaped;
          if (absl::Status s = Char(&cp, &escaped); !s.ok()) return s;
          if (escaped) {
            AppendUtf8(cp, &item.bytes);
          } else {
            item.bytes.push_back(static_cast<char>(cp));
          }
        }
        Advance();
        if (item.bytes.empty()) item.kind = Node::kSeq;  // "" matches nothing: an empty step
      } else if (c == '[') {
        Advance();
        item.kind = Node::kClass;
        bool negated = false;
        if (Peek() == '^') {
          negated = true;
          Advance();
        }
        std::vector<std::pair<uint32_t, uint32_t>> ranges;
        for (;;) {
          if (AtEnd()) return Error("unterminated character class");
          if (Peek() == ']') break;
          uint32_t lo, hi;
          if (absl::Status s = ClassChar(&lo); !s.ok()) return s;
          hi = lo;
          if (Peek() == '-' && Peek(1) != ']' && Peek(1) != '\0') {
            Advance();
            if (absl::Status s = ClassChar(&hi); !s.ok()) return s;
            if (hi < lo) return Error("character range ends before it starts");
          }
          ranges.emplace_back(lo, hi);
        }
        Advance();
        std::sort(ranges.begin(), ranges.end());
        std::vector<std::pair<uint32_t, uint32_t>> merged;
        for (auto r : ranges) {
          if (!merged.empty() && r.first <= merged.back().second + 1) {
            merged.back().second = std::max(merged.back().second, r.second);
          } else {
            merged.push_back(r);
          }
        }
        if (negated) {
          std::vector<std::pair<uint32_t, uint32_t>> complement;
          uint32_t next = 0;
          for (auto r : merged) {
            if (r.first > next) complement.emplace_back(next, r.first - 1);
            next = r.second + 1;
          }
          if (next <= kMaxCodePoint) complement.emplace_back(next, kMaxCodePoint);
          merged = std::move(complement);
        }
        if (merged.empty()) return Error("character class matches nothing");
        item.ranges = std::move(merged);
      } else if (c == '.') {
        Advance();
        item.kind = Node::kClass;
        item.ranges = {{0, kMaxCodePoint}};
      } else if (c == '(') {
        Advance();
        SkipSpace();
        if (++nesting_ > Grammar::kMaxNesting) {
          return Error(absl::StrCat("groups nest more than ", Grammar::kMaxNesting, " deep"));
        }
        absl::Status nested = Alternatives(&item);
        --nesting_;
        if (!nested.ok()) return nested;
        SkipSpace();
        if (Peek() != ')') return Error("expected ')'");
        Advance();
      } else if (IdentChar(c)) {
        item.kind = Node::kRef;
        item.name = Ident();
      } else {
        return Error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
      }
      // Postfix repetition, directly after the item.
      const char op = Peek();
      if (op == '*' || op == '+' || op == '?') {
        Advance();
        Node rep;
        rep.kind = Node::kRepeat;
        rep.line = item.line;
        rep.column = item.column;
        rep.min = op == '+' ? 1 : 0;
        rep.max = op == '?' ? 1 : -1;
        rep.children.push_back(std::move(item));
        item = std::move(rep);
      } else if (op == '{') {
        Advance();
        int lo, hi;
        if (absl::Status s = Count(&lo); !s.ok()) return s;
        hi = lo;
        if (Peek() == ',') {
          Advance();
          if (Peek() == '}') {
            hi = -1;
          } else if (absl::Status s = Count(&hi); !s.ok()) {
            return s;
          }
        }
        if (Peek() != '}') return Error("expected '}' after a repetition count");
        Advance();
        if (hi >= 0 && hi < lo) return Error("repetition {m,n} with n < m");
        Node rep;
        rep.kind = Node::kRepeat;
        rep.line = item.line;
        rep.column = item.column;
        rep.min = lo;
        rep.max = hi;
        rep.children.push_back(std::move(item));
        item = std::move(rep);
      }
      out->children.push_back(std::move(item));
    }
  }

  absl::Status Count(int* out) {
    SkipSpace();
    int64_t v = 0;
    bool any = false;
    while (Peek() >= '0' && Peek() <= '9') {
      v = v * 10 + (Peek() - '0');
      if (v > Grammar::kMaxRepeat) {
        return Error(absl::StrCat("repetition count over ", Grammar::kMaxRepeat));
      }
      any = true;
      Advance();
    }
    SkipSpace();
    if (!any) return Error("expected a repetition count");
    *out = static_cast<int>(v);
    return absl::OkStatus();
  }

  absl::Status Hex(int digits, uint32_t* out) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      const char c = Peek();
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        return Error(absl::StrCat("expected ", digits, " hex digits"));
      }
      v = v * 16 + d;
      Advance();
    }
    *out = v;
    return absl::OkStatus();
  }

  // One character of a literal: a raw byte (escaped false) or an escape's code point (true).
  absl::Status Char(uint32_t* cp, bool* escaped) {
    *escaped = false;
    if (Peek() != '\\') {
      *cp = static_cast<unsigned char>(Peek());
      Advance();
      return absl::OkStatus();
    }
    Advance();
    *escaped = true;
    const char e = Peek();
    if (AtEnd()) return Error("escape at the end of the grammar");
    Advance();
    switch (e) {
      case 'n':
        *cp = '\n';
        return absl::OkStatus();
      case 'r':
        *cp = '\r';
        return absl::OkStatus();
      case 't':
        *cp = '\t';
        return absl::OkStatus();
      case '\\':
      case '"':
      case '\'':
      case '[':
      case ']':
      case '-':
      case '^':
      case '/':
        *cp = static_cast<unsigned char>(e);
        return absl::OkStatus();
      case 'x':
        return Hex(2, cp);
      case 'u':
      case 'U': {
        if (absl::Status s = Hex(e == 'u' ? 4 : 8, cp); !s.ok()) return s;
        if (*cp > kMaxCodePoint || (*cp >= 0xD800 && *cp <= 0xDFFF)) {
          return Error("escape names no Unicode scalar value");
        }
        return absl::OkStatus();
      }
      default:
        return Error(absl::StrCat("unknown escape '\\", std::string(1, e), "'"));
    }
  }

  // One character of a class as a code point (raw UTF-8 in the grammar text is decoded; \xHH
  // names the code point HH).
  absl::Status ClassChar(uint32_t* cp) {
    bool escaped;
    if (absl::Status s = Char(cp, &escaped); !s.ok()) return s;
    if (escaped || *cp < 0x80) return absl::OkStatus();
    int extra;
    if ((*cp & 0xE0) == 0xC0) {
      *cp &= 0x1F;
      extra = 1;
    } else if ((*cp & 0xF0) == 0xE0) {
      *cp &= 0x0F;
      extra = 2;
    } else if ((*cp & 0xF8) == 0xF0) {
      *cp &= 0x07;
      extra = 3;
    } else {
      return Error("invalid UTF-8 in a character class");
    }
    for (int i = 0; i < extra; ++i) {
      const unsigned char b = static_cast<unsigned char>(Peek());
      if ((b & 0xC0) != 0x80) return Error("invalid UTF-8 in a character class");
      *cp = (*cp << 6) | (b & 0x3F);
      Advance();
    }
    return absl::OkStatus();
  }

  std::string_view text_;
  size_t pos_ = 0;
  int nesting_ = 0;
  int line_ = 1;
  size_t line_start_ = 0;
};

// Byte-range sequences matching exactly the UTF-8 encodings of the code points in [lo, hi]
// (the split of RE2 and Rust's utf8-ranges).
using ByteRanges = std::vector<std::pair<uint8_t, uint8_t>>;

void SplitUtf8(uint32_t lo, uint32_t hi, std::vector<ByteRanges>* out) {
  if (lo > hi) return;
  // Surrogates have no encoding.
  if (lo <= 0xDFFF && hi >= 0xD800) {
    if (lo < 0xD800) SplitUtf8(lo, 0xD7FF, out);
    if (hi > 0xDFFF) SplitUtf8(0xE000, hi, out);
    return;
  }
  // Split at the encoding-length boundaries.
  for (uint32_t limit : {0x7Fu, 0x7FFu, 0xFFFFu}) {
    if (lo <= limit && hi > limit) {
      SplitUtf8(lo, limit, out);
      SplitUtf8(limit + 1, hi, out);
      return;
    }
  }
  const int n = hi <= 0x7F ? 1 : hi <= 0x7FF ? 2 : hi <= 0xFFFF ? 3 : 4;
  if (n == 1) {
    out->push_back({{static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)}});
    return;
  }
  // Until every trailing 6-bit group spans its full range, split off the edges.
  for (int i = 1; i < n; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        SplitUtf8(lo, lo | m, out);
        SplitUtf8((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        SplitUtf8(lo, (hi & ~m) - 1, out);
        SplitUtf8(hi & ~m, hi, out);
        return;
      }
    }
  }
  std::string a, b;
  AppendUtf8(lo, &a);
  AppendUtf8(hi, &b);
  ByteRanges seq;
  for (size_t i = 0; i < a.size(); ++i) {
    seq.emplace_back(static_cast<uint8_t>(a[i]), static_cast<uint8_t>(b[i]));
  }
  out->push_back(std::move(seq));
}

struct BitsetHash {
  size_t operator()(const std::bitset<256>& b) const { return std::hash<std::bitset<256>>()(b); }
};

}  // namespace

class GrammarBuilder {
 public:
  absl::StatusOr<std::shared_ptr<const Grammar>> Build(
      const std::vector<std::pair<std::string, Node>>& parsed) {
    for (const auto& [name, node] : parsed) {
      if (defined_.contains(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("grammar line ", node.line, ": rule '", name, "' is defined twice"));
      }
      defined_[name] = true;
      RuleId(name);
    }
    auto root = ids_.find("root");
    if (root == ids_.end()) {
      return absl::InvalidArgumentError("grammar has no 'root' rule (the whole output)");
    }
    for (const auto& [name, node] : parsed) {
      std::vector<std::vector<Element>> alts;
      for (const Node& alt : node.children) {
        std::vector<Element> seq;
        RETURN_IF_ERROR(Lower(alt, name, &seq));
        alts.push_back(std::move(seq));
      }
      rules_[ids_[name]] = std::move(alts);
    }
    for (const auto& [name, id] : ids_) {
      if (!defined_.contains(name)) {
        return absl::InvalidArgumentError(absl::StrCat("grammar rule '", referrer_[name],
                                                       "' refers to undefined rule '", name, "'"));
      }
    }
    return Finish(root->second);
  }

 private:
  uint32_t RuleId(const std::string& name) {
    auto [it, added] = ids_.try_emplace(name, static_cast<uint32_t>(rules_.size()));
    if (added) {
      rules_.emplace_back();
      names_.push_back(name);
    }
    return it->second;
  }
  uint32_t NewRule(const std::string& parent, std::vector<std::vector<Element>> alts) {
    rules_.push_back(std::move(alts));
    names_.push_back(absl::StrCat(parent, " (part)"));
    return static_cast<uint32_t>(rules_.size() - 1);
  }
  uint32_t ByteSet(const std::bitset<256>& set) {
    auto [it, added] = byte_set_ids_.try_emplace(set, static_cast<uint32_t>(byte_sets_.size()));
    if (added) byte_sets_.push_back(set);
    return it->second;
  }
  absl::Status Grow(int64_t n) {
    size_ += n;
    if (size_ > Grammar::kMaxElements) {
      return absl::InvalidArgumentError(
          absl::StrCat("grammar expands to more than ", Grammar::kMaxElements,
                       " elements (large repetition counts multiply)"));
    }
    return absl::OkStatus();
  }

  // Appends the elements matching `node` to `out`; `rule` names the rule it is part of.
  absl::Status Lower(const Node& node, const std::string& rule, std::vector<Element>* out) {
    switch (node.kind) {
      case Node::kLiteral:
        RETURN_IF_ERROR(Grow(static_cast<int64_t>(node.bytes.size())));
        for (unsigned char c : node.bytes) {
          std::bitset<256> set;
          set.set(c);
          out->push_back({Element::kBytes, ByteSet(set)});
        }
        return absl::OkStatus();
      case Node::kClass: {
        std::vector<ByteRanges> seqs;
        for (auto [lo, hi] : node.ranges) SplitUtf8(lo, hi, &seqs);
        // One-byte sequences merge into one set; longer ones become alternatives.
        std::bitset<256> ascii;
        std::vector<std::vector<Element>> alts;
        for (const ByteRanges& seq : seqs) {
          if (seq.size() == 1) {
            for (int b = seq[0].first; b <= seq[0].second; ++b) ascii.set(b);
            continue;
          }
          std::vector<Element> elems;
          for (auto [lo, hi] : seq) {
            std::bitset<256> set;
            for (int b = lo; b <= hi; ++b) set.set(b);
            elems.push_back({Element::kBytes, ByteSet(set)});
          }
          alts.push_back(std::move(elems));
        }
        RETURN_IF_ERROR(Grow(static_cast<int64_t>(alts.size()) * 4 + 2));
        if (alts.empty()) {
          out->push_back({Element::kBytes, ByteSet(ascii)});
          return absl::OkStatus();
        }
        if (ascii.any()) alts.insert(alts.begin(), {Element{Element::kBytes, ByteSet(ascii)}});
        out->push_back({Element::kRule, NewRule(rule, std::move(alts))});
        return absl::OkStatus();
      }
      case Node::kRef:
        RETURN_IF_ERROR(Grow(1));
        if (!referrer_.contains(node.name)) referrer_[node.name] = rule;
        out->push_back({Element::kRule, RuleId(node.name)});
        return absl::OkStatus();
      case Node::kSeq:
        for (const Node& c : node.children) RETURN_IF_ERROR(Lower(c, rule, out));
        return absl::OkStatus();
      case Node::kAlt: {
        if (node.children.size() == 1) return Lower(node.children[0], rule, out);
        std::vector<std::vector<Element>> alts;
        for (const Node& c : node.children) {
          std::vector<Element> seq;
          RETURN_IF_ERROR(Lower(c, rule, &seq));
          alts.push_back(std::move(seq));
        }
        RETURN_IF_ERROR(Grow(1));
        out->push_back({Element::kRule, NewRule(rule, std::move(alts))});
        return absl::OkStatus();
      }
      case Node::kRepeat: {
        // The repeated item as one element: itself when it lowers to one, else a rule.
        std::vector<Element> item;
        RETURN_IF_ERROR(Lower(node.children[0], rule, &item));
        if (item.size() != 1) {
          RETURN_IF_ERROR(Grow(1));
          item = {Element{Element::kRule, NewRule(rule, {std::move(item)})}};
        }
        const Element e = item[0];
        RETURN_IF_ERROR(Grow(node.min));
        for (int i = 0; i < node.min; ++i) out->push_back(e);
        if (node.max < 0) {
          // R ::= e R | (nothing)
          const uint32_t r = NewRule(rule, {});
          rules_[r] = {{e, Element{Element::kRule, r}}, {}};
          RETURN_IF_ERROR(Grow(3));
          out->push_back({Element::kRule, r});
        } else if (node.max > node.min) {
          // R1 ::= e | (nothing);  Rk ::= e R(k-1) | (nothing)
          RETURN_IF_ERROR(Grow(3 * int64_t{node.max - node.min}));
          uint32_t r = NewRule(rule, {{e}, {}});
          for (int k = 2; k <= node.max - node.min; ++k) {
            r = NewRule(rule, {{e, Element{Element::kRule, r}}, {}});
          }
          out->push_back({Element::kRule, r});
        }
        return absl::OkStatus();
      }
    }
    return absl::InternalError("unknown grammar node");
  }

  absl::StatusOr<std::shared_ptr<const Grammar>> Finish(uint32_t root) {
    const size_t n = rules_.size();
    // Fewest bytes per rule (fixed point), then nullability and left recursion.
    std::vector<uint32_t> rule_min(n, kInfinite);
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        for (const auto& alt : rules_[r]) {
          uint32_t len = 0;
          for (const Element& e : alt) {
            len = AddSat(len, e.kind == Element::kBytes ? 1 : rule_min[e.index]);
          }
          if (len < rule_min[r]) {
            rule_min[r] = len;
            changed = true;
          }
        }
      }
    }
    for (size_t r = 0; r < n; ++r) {
      if (rule_min[r] == kInfinite) {
        return absl::InvalidArgumentError(absl::StrCat("grammar rule '", names_[r],
                                                       "' can never finish (every alternative "
                                                       "refers back to it without end)"));
      }
    }
    // Left recursion: rule -> rules reachable before any byte.
    std::vector<std::vector<uint32_t>> left(n);
    for (size_t r = 0; r < n; ++r) {
      for (const auto& alt : rules_[r]) {
        for (const Element& e : alt) {
          if (e.kind == Element::kBytes) break;
          left[r].push_back(e.index);
          if (rule_min[e.index] != 0) break;
        }
      }
    }
    std::vector<int> mark(n, 0);  // 0 new, 1 on the path, 2 done
    for (size_t start = 0; start < n; ++start) {
      if (mark[start] != 0) continue;
      // Iterative DFS.
      std::vector<std::pair<uint32_t, size_t>> stack = {{static_cast<uint32_t>(start), 0}};
      mark[start] = 1;
      while (!stack.empty()) {
        auto& [r, i] = stack.back();
        if (i == left[r].size()) {
          mark[r] = 2;
          stack.pop_back();
          continue;
        }
        const uint32_t next = left[r][i++];
        if (mark[next] == 1) {
          return absl::InvalidArgumentError(absl::StrCat(
              "grammar rule '", names_[next],
              "' is left-recursive (it can reach itself before matching a byte); rewrite it "
              "with repetition, e.g. list ::= item (\",\" item)*"));
        }
        if (mark[next] == 0) {
          mark[next] = 1;
          stack.emplace_back(next, 0);
        }
      }
    }

    // How deep rules nest before their first byte bounds the matcher's recursion.
    std::vector<int> chain(n, -1);
    for (size_t start = 0; start < n; ++start) {
      std::vector<std::pair<uint32_t, size_t>> stack = {{static_cast<uint32_t>(start), 0}};
      while (!stack.empty()) {
        auto& [r, i] = stack.back();
        if (chain[r] >= 0) {
          stack.pop_back();
          continue;
        }
        if (i < left[r].size()) {
          const uint32_t next = left[r][i++];
          if (chain[next] < 0) stack.emplace_back(next, 0);
          continue;
        }
        int deepest = 0;
        for (uint32_t next : left[r]) deepest = std::max(deepest, chain[next] + 1);
        chain[r] = deepest;
        if (deepest > Grammar::kMaxNesting) {
          return absl::InvalidArgumentError(absl::StrCat("grammar rule '", names_[r],
                                                         "' nests more than ", Grammar::kMaxNesting,
                                                         " rules deep before its first byte"));
        }
        stack.pop_back();
      }
    }

    auto g = std::shared_ptr<Grammar>(new Grammar());
    g->root_ = root;
    g->byte_sets_ = std::move(byte_sets_);
    g->rule_min_ = rule_min;
    g->rules_.resize(n);
    for (size_t r = 0; r < n; ++r) {
      for (const auto& alt : rules_[r]) {
        g->rules_[r].push_back(static_cast<uint32_t>(g->elements_.size()));
        g->elements_.insert(g->elements_.end(), alt.begin(), alt.end());
        g->elements_.push_back({Element::kEnd, 0});
      }
    }
    g->min_rest_.assign(g->elements_.size(), 0);
    for (size_t p = g->elements_.size(); p-- > 0;) {
      const Element& e = g->elements_[p];
      if (e.kind == Element::kEnd) continue;
      const uint32_t cost = e.kind == Element::kBytes ? 1 : rule_min[e.index];
      g->min_rest_[p] = AddSat(cost, g->min_rest_[p + 1]);
    }
    return std::shared_ptr<const Grammar>(std::move(g));
  }

  std::vector<std::vector<std::vector<Element>>> rules_;
  std::vector<std::string> names_;
  std::map<std::string, uint32_t> ids_;
  absl::flat_hash_map<std::string, bool> defined_;
  absl::flat_hash_map<std::string, std::string> referrer_;
  std::vector<std::bitset<256>> byte_sets_;
  std::unordered_map<std::bitset<256>, uint32_t, BitsetHash> byte_set_ids_;
  int64_t size_ = 0;
};

absl::StatusOr<std::shared_ptr<const Grammar>> Grammar::Parse(std::string_view text) {
  std::vector<std::pair<std::string, Node>> rules;
  Parser parser(text);
  if (absl::Status s = parser.Run(&rules); !s.ok()) return s;
  GrammarBuilder builder;
  return builder.Build(rules);
}

std::string GbnfLiteral(std::string_view bytes) {
  std::string out = "\"";
  for (unsigned char c : bytes) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          static constexpr char kHex[] = "0123456789ABCDEF";
          out += "\\x";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out += "\"";
  return out;
}

}  // namespace shardserve::grammar
