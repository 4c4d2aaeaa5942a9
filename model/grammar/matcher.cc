#include "model/grammar/matcher.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer/tokenizer.h"

namespace shardserve::grammar {
namespace {

constexpr uint32_t kInfinite = std::numeric_limits<uint32_t>::max();

uint32_t AddSat(uint32_t a, uint32_t b) { return a >= kInfinite - b ? kInfinite : a + b; }

// Allows token `id` in a mask (bit id % 8 of byte id / 8).
void SetBit(std::string* bits, int32_t id) {
  (*bits)[id >> 3] = static_cast<char>((*bits)[id >> 3] | (1 << (id & 7)));
}

bool TestBit(const std::string& bits, int32_t id) { return (bits[id >> 3] >> (id & 7)) & 1; }

}  // namespace

Vocabulary::Vocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> eos_ids)
    : bytes_(std::move(token_bytes)), eos_ids_(std::move(eos_ids)) {
  std::sort(eos_ids_.begin(), eos_ids_.end());
  eos_ids_.erase(std::unique(eos_ids_.begin(), eos_ids_.end()), eos_ids_.end());
  std::vector<int32_t> sorted;
  std::bitset<256> single;
  for (int32_t id = 0; id < size(); ++id) {
    if (bytes_[id].empty() || is_eos(id)) continue;
    sorted.push_back(id);
    max_length_ = std::max(max_length_, bytes_[id].size());
    if (bytes_[id].size() == 1) single.set(static_cast<unsigned char>(bytes_[id][0]));
  }
  has_all_bytes_ = single.all();
  std::sort(sorted.begin(), sorted.end(), [&](int32_t a, int32_t b) {
    return bytes_[a] != bytes_[b] ? bytes_[a] < bytes_[b] : a < b;
  });
  nodes_.emplace_back();
  Fill(0, sorted, 0, sorted.size(), 0);
}

void Vocabulary::Fill(uint32_t node, const std::vector<int32_t>& sorted, size_t lo, size_t hi,
                      size_t depth) {
  size_t i = lo;
  nodes_[node].tokens_begin = static_cast<uint32_t>(node_tokens_.size());
  while (i < hi && bytes_[sorted[i]].size() == depth) node_tokens_.push_back(sorted[i++]);
  nodes_[node].tokens_end = static_cast<uint32_t>(node_tokens_.size());
  // Children, one per next byte, laid out together.
  std::vector<std::pair<size_t, size_t>> groups;
  while (i < hi) {
    const char b = bytes_[sorted[i]][depth];
    size_t j = i;
    while (j < hi && bytes_[sorted[j]][depth] == b) ++j;
    groups.emplace_back(i, j);
    i = j;
  }
  const uint32_t first = static_cast<uint32_t>(nodes_.size());
  nodes_.resize(nodes_.size() + groups.size());
  nodes_[node].children_begin = first;
  nodes_[node].children_end = first + static_cast<uint32_t>(groups.size());
  for (size_t k = 0; k < groups.size(); ++k) {
    nodes_[first + k].byte = static_cast<uint8_t>(bytes_[sorted[groups[k].first]][depth]);
    Fill(first + static_cast<uint32_t>(k), sorted, groups[k].first, groups[k].second, depth + 1);
  }
  nodes_[node].subtree_end = static_cast<uint32_t>(node_tokens_.size());
}

bool Vocabulary::is_eos(int32_t id) const {
  return std::binary_search(eos_ids_.begin(), eos_ids_.end(), id);
}

std::shared_ptr<const Vocabulary> Vocabulary::FromTokenizer(const Tokenizer& tokenizer,
                                                            int32_t size) {
  const int32_t n = size > 0 ? size : tokenizer.vocab_size();
  std::vector<std::string> bytes(n);
  for (int32_t id = 0; id < std::min(n, tokenizer.vocab_size()); ++id) {
    if (!tokenizer.IsSpecial(id)) bytes[id] = tokenizer.TokenText(id);
  }
  std::vector<int32_t> eos;
  for (int32_t id : tokenizer.eos_ids()) {
    if (id < n) eos.push_back(id);
  }
  return std::make_shared<const Vocabulary>(std::move(bytes), std::move(eos));
}

TokenTable::TokenTable(std::shared_ptr<const Grammar> grammar,
                       std::shared_ptr<const Vocabulary> vocabulary)
    : grammar_(std::move(grammar)), vocab_(std::move(vocabulary)) {}

TokenTable::~TokenTable() = default;

std::shared_ptr<const TokenTable::Entry> TokenTable::Get(const std::vector<uint32_t>& key) {
  absl::MutexLock lock(&mu_);
  if (auto it = entries_.find(key); it != entries_.end()) {
    ++hits_;
    return it->second;
  }
  // A fresh scratch matcher once the old one's interned stacks grow large or it overflowed.
  if (scratch_ == nullptr || scratch_->overflow_ ||
      scratch_->frame_store_.size() > Matcher::kMaxFrames / 2) {
    scratch_ = std::make_unique<Matcher>(grammar_, vocab_);
  }
  std::shared_ptr<const Entry> entry = scratch_->BuildEntry(key);
  ++built_;
  const size_t size =
      entry->accepted_bits.size() +
      sizeof(int32_t) * (entry->accepted_ids.size() + entry->uncertain.size() + key.size()) +
      sizeof(entry->needy[0]) * entry->needy.size() + sizeof(Entry);
  if (bytes_ + size <= kMaxBytes) {
    bytes_ += size;
    entries_.emplace(key, entry);
  }
  return entry;
}

int64_t TokenTable::entries_built() const {
  absl::MutexLock lock(&mu_);
  return built_;
}

int64_t TokenTable::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

size_t TokenTable::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

Matcher::Matcher(std::shared_ptr<TokenTable> table)
    : Matcher(table->grammar(), table->vocabulary()) {
  table_ = std::move(table);
}

Matcher::Matcher(std::shared_ptr<const Grammar> grammar,
                 std::shared_ptr<const Vocabulary> vocabulary)
    : grammar_(std::move(grammar)), vocab_(std::move(vocabulary)) {
  State start;
  expanded_.clear();
  for (uint32_t alt : grammar_->alternatives(grammar_->root())) Expand(alt, nullptr, &start);
  Normalize(&start);
  if (start.frames.size() > kMaxStacks) overflow_ = true;
  frames_ = std::move(start.frames);
  can_end_ = start.can_end;
}

const Matcher::Frame* Matcher::Intern(uint32_t pos, const Frame* parent) {
  auto [it, added] = interned_.try_emplace(std::make_pair(pos, parent), nullptr);
  if (added) {
    if (frame_store_.size() >= kMaxFrames) overflow_ = true;
    const uint32_t rest = AddSat(grammar_->min_rest(pos), parent ? parent->rest : 0);
    frame_store_.push_back(Frame{pos, rest, parent});
    it->second = &frame_store_.back();
  }
  return it->second;
}

void Matcher::Expand(uint32_t pos, const Frame* parent, State* out) {
  for (;;) {
    // Each (position, continuation) once per closure: ambiguous or nullable alternatives reach
    // the same point by many paths, and following each would multiply them.
    if (!expanded_.insert({pos, parent}).second) return;
    if (expanded_.size() > kMaxClosure || ++work_ > kMaxWork) {
      overflow_ = true;
      return;
    }
    const Element& e = grammar_->element(pos);
    if (e.kind == Element::kEnd) {
      if (parent == nullptr) {
        out->can_end = true;
        return;
      }
      if (parent == &context_) {
        out->popped = true;
        return;
      }
      pos = parent->pos;
      parent = parent->parent;
      continue;
    }
    if (e.kind == Element::kBytes) {
      out->frames.push_back(Intern(pos, parent));
      return;
    }
    // A rule: what follows it is the continuation (none when the alternative ends with it).
    const Frame* cont =
        grammar_->element(pos + 1).kind == Element::kEnd ? parent : Intern(pos + 1, parent);
    for (uint32_t alt : grammar_->alternatives(e.index)) Expand(alt, cont, out);
    return;
  }
}

void Matcher::Normalize(State* s) {
  std::sort(s->frames.begin(), s->frames.end());
  s->frames.erase(std::unique(s->frames.begin(), s->frames.end()), s->frames.end());
}

void Matcher::Advance(const State& in, uint8_t byte, State* out) {
  out->Clear();
  expanded_.clear();
  for (const Frame* f : in.frames) {
    if (overflow_) break;
    if (grammar_->byte_set(grammar_->element(f->pos).index).test(byte)) {
      Expand(f->pos + 1, f->parent, out);
    }
  }
  Normalize(out);
  // Bounds the work of every later step: too ambiguous a grammar fails its request instead.
  if (out->frames.size() > kMaxStacks) overflow_ = true;
  if (overflow_) out->Clear();
}

int64_t Matcher::MinBytesToEnd() const {
  if (can_end_) return 0;
  uint32_t best = kInfinite;
  for (const Frame* f : frames_) best = std::min(best, f->rest);
  return best;
}

absl::Status Matcher::Accept(int32_t id) {
  work_ = 0;
  if (id < 0 || id >= vocab_->size()) {
    return absl::InvalidArgumentError(absl::StrCat("token ", id, " is outside the vocabulary"));
  }
  if (finished_) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", id, " follows the end of the constrained output"));
  }
  if (vocab_->is_eos(id)) {
    if (!can_end_) {
      return absl::InvalidArgumentError(absl::StrCat("end-of-generation token ", id,
                                                     " before the constrained output is complete"));
    }
    finished_ = true;
    return absl::OkStatus();
  }
  const std::string& bytes = vocab_->bytes(id);
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", id, " (a special token) is not allowed in constrained output"));
  }
  State cur;
  cur.frames = frames_;
  State next;
  for (size_t i = 0; i < bytes.size(); ++i) {
    Advance(cur, static_cast<uint8_t>(bytes[i]), &next);
    if (overflow_) {
      return absl::ResourceExhaustedError(
          "the grammar is too ambiguous to track (too many parse stacks)");
    }
    if (next.frames.empty() && !next.can_end) {
      return absl::InvalidArgumentError(absl::StrCat("token ", id, " ('", absl::CHexEscape(bytes),
                                                     "') breaks the grammar at its byte ", i));
    }
    if (next.frames.empty() && i + 1 < bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("token ", id, " ('", absl::CHexEscape(bytes),
                                                     "') runs past the end of the grammar"));
    }
    std::swap(cur, next);
  }
  if (overflow_) {
    return absl::ResourceExhaustedError(
        "the grammar is too ambiguous to track (too many parse stacks)");
  }
  frames_ = std::move(cur.frames);
  can_end_ = cur.can_end;
  return absl::OkStatus();
}

int32_t Matcher::InternState(State&& s) {
  std::vector<const Frame*> key = s.frames;
  if (s.can_end) key.push_back(nullptr);
  if (s.popped) key.push_back(&context_);
  auto [it, added] = state_ids_.try_emplace(std::move(key), static_cast<int32_t>(states_.size()));
  if (added) {
    StateInfo info;
    info.can_end = s.can_end;
    info.popped = s.popped;
    uint32_t need = kInfinite;
    for (const Frame* f : s.frames) {
      need = std::min(need, f->rest);
      info.next_bytes |= grammar_->byte_set(grammar_->element(f->pos).index);
    }
    // A popped path needs only what lies below, which the table's callers add.
    info.need = s.can_end || s.popped ? 0 : need;
    info.frames = std::move(s.frames);
    states_.push_back(std::move(info));
  }
  return it->second;
}

int32_t Matcher::Transition(int32_t state, uint8_t byte) {
  const uint64_t key = (static_cast<uint64_t>(state) << 8) | byte;
  auto it = transitions_.find(key);
  if (it != transitions_.end()) return it->second;
  State in;
  in.frames = states_[state].frames;
  State out;
  Advance(in, byte, &out);
  const int32_t next =
      out.frames.empty() && !out.can_end && !out.popped ? -1 : InternState(std::move(out));
  transitions_.emplace(key, next);
  return next;
}

template <typename F>
void Matcher::ForEachChild(uint32_t node, int32_t state, F&& f) {
  const StateInfo& st = states_[state];  // a deque: stays put while states are added
  const Vocabulary::Node& n = vocab_->node(node);
  for (uint32_t c = n.children_begin; c < n.children_end && !overflow_; ++c) {
    const Vocabulary::Node& child = vocab_->node(c);
    if (!st.next_bytes.test(child.byte)) continue;
    const int32_t next = Transition(state, child.byte);
    if (next >= 0) f(c, child, next, states_[next]);
  }
}

void Matcher::Walk(uint32_t node, int32_t state, int64_t budget, std::string* bits,
                   int64_t* max_need) {
  ForEachChild(node, state,
               [&](uint32_t c, const Vocabulary::Node& child, int32_t next, const StateInfo& ns) {
                 if (child.tokens_begin != child.tokens_end && (budget < 0 || ns.need <= budget)) {
                   for (uint32_t t = child.tokens_begin; t < child.tokens_end; ++t) {
                     SetBit(bits, vocab_->node_token(t));
                   }
                   *max_need = std::max<int64_t>(*max_need, ns.need);
                 }
                 if (!ns.frames.empty() && child.children_begin != child.children_end) {
                   Walk(c, next, budget, bits, max_need);
                 }
               });
}

void Matcher::AddEos(std::string* bits) const {
  if (!can_end_ || finished_) return;
  for (int32_t id : vocab_->eos_ids()) {
    if (id >= 0 && id < vocab_->size()) {
      SetBit(bits, id);
    }
  }
}

void Matcher::ClearMemo() {
  transitions_.clear();
  state_ids_.clear();
  states_.clear();
}

std::shared_ptr<TokenTable::Entry> Matcher::BuildEntry(const std::vector<uint32_t>& key) {
  auto entry = std::make_shared<TokenTable::Entry>();
  if (transitions_.size() > kMaxTransitions) ClearMemo();
  work_ = 0;
  size_t depth = key.size();
  const bool at_root = depth > 0 && key.back() == TokenTable::kRootMarker;
  if (at_root) --depth;
  const Frame* chain = at_root ? nullptr : &context_;
  for (size_t i = depth; i-- > 0;) {
    if (key[i] >= grammar_->num_elements() || grammar_->element(key[i]).kind == Element::kEnd) {
      entry->overflow = true;  // not a stack top of this grammar: let the caller walk
      return entry;
    }
    chain = Intern(key[i], chain);
  }
  State start;
  start.frames.push_back(chain);
  const int32_t state = InternState(std::move(start));
  const size_t n_bytes = (static_cast<size_t>(vocab_->size()) + 7) / 8;
  std::string accepted(n_bytes, '\0');
  std::vector<std::pair<uint32_t, uint32_t>> below;  // trie token ranges that reach below
  std::vector<std::pair<int32_t, uint32_t>> needs;   // (accepted token, its need)
  LocalWalk(0, state, &accepted, &below, &needs);
  if (overflow_) {
    entry->overflow = true;
    return entry;
  }
  if (!needs.empty()) {
    entry->min_need = kInfinite;
    for (auto [id, need] : needs) {
      entry->min_need = std::min(entry->min_need, need);
      entry->max_need = std::max(entry->max_need, need);
    }
    for (auto [id, need] : needs) {
      if (need > entry->min_need) entry->needy.emplace_back(id, need);
    }
  }
  // Ranges come in trie order, nested ones after the range holding them.
  uint32_t covered = 0;
  for (auto [lo, hi] : below) {
    for (uint32_t k = std::max(lo, covered); k < hi; ++k) {
      const int32_t id = vocab_->node_token(k);
      if (!TestBit(accepted, id)) entry->uncertain.push_back(id);
    }
    covered = std::max(covered, hi);
  }
  // Each accepted token was met once, at its trie node.
  if (static_cast<int64_t>(needs.size()) * 32 >= vocab_->size()) {
    entry->accepted_bits = std::move(accepted);
  } else {
    entry->accepted_ids.reserve(needs.size());
    for (auto [id, need] : needs) entry->accepted_ids.push_back(id);
  }
  return entry;
}

void Matcher::LocalWalk(uint32_t node, int32_t state, std::string* accepted,
                        std::vector<std::pair<uint32_t, uint32_t>>* below,
                        std::vector<std::pair<int32_t, uint32_t>>* needs) {
  ForEachChild(node, state,
               [&](uint32_t c, const Vocabulary::Node& child, int32_t next, const StateInfo& ns) {
                 for (uint32_t t = child.tokens_begin; t < child.tokens_end; ++t) {
                   SetBit(accepted, vocab_->node_token(t));
                   needs->emplace_back(vocab_->node_token(t), ns.need);
                 }
                 if (child.children_begin == child.children_end) return;
                 // A path left the key's frames here: the longer tokens depend on what lies
                 // below.
                 if (ns.popped) below->emplace_back(child.tokens_end, child.subtree_end);
                 if (!ns.frames.empty()) LocalWalk(c, next, accepted, below, needs);
               });
}

bool Matcher::MaskFromTable(int32_t state, int64_t budget, std::string* bits, int64_t* max_need) {
  const std::vector<const Frame*> frames = states_[state].frames;
  std::vector<std::shared_ptr<const TokenTable::Entry>> entries;
  std::vector<uint32_t> key;
  std::string some;  // one stack's accepted tokens, when the budget drops some of them
  for (const Frame* f : frames) {
    key.clear();
    const Frame* g = f;
    for (int d = 0; d < TokenTable::kContextDepth && g != nullptr; ++d) {
      key.push_back(g->pos);
      g = g->parent;
    }
    if (g == nullptr) key.push_back(TokenTable::kRootMarker);
    std::shared_ptr<const TokenTable::Entry> e = table_->Get(key);
    if (e->overflow) return false;
    // An accepted token leaves its own need in the key's frames plus what lies below.
    const uint32_t under = g != nullptr ? g->rest : 0;
    // Sets the entry's accepted tokens in `dst`.
    auto add_accepted = [&e](std::string* dst) {
      if (!e->accepted_bits.empty()) {
        for (size_t i = 0; i < dst->size(); ++i) (*dst)[i] |= e->accepted_bits[i];
      } else {
        for (int32_t id : e->accepted_ids) SetBit(dst, id);
      }
    };
    const bool has_accepted = !e->accepted_bits.empty() || !e->accepted_ids.empty();
    if (has_accepted && (budget < 0 || AddSat(e->min_need, under) <= budget)) {
      if (budget < 0 || AddSat(e->max_need, under) <= budget) {
        add_accepted(bits);
        *max_need = std::max<int64_t>(*max_need, AddSat(e->max_need, under));
      } else {
        // The budget drops the needier tokens (fewer than the rest: all others need min_need).
        some.assign(bits->size(), '\0');
        add_accepted(&some);
        for (auto [id, need] : e->needy) {
          if (AddSat(need, under) > budget) {
            some[id >> 3] = static_cast<char>(some[id >> 3] & ~(1 << (id & 7)));
          }
        }
        for (size_t i = 0; i < bits->size(); ++i) (*bits)[i] |= some[i];
        *max_need = std::max<int64_t>(*max_need, budget);
      }
    }
    entries.push_back(std::move(e));
  }
  // Tokens that reach below their stack's key: run each from the whole state, sharing the
  // states of a prefix with the token checked before it (the list is in byte order).
  std::vector<int32_t> path;  // path[d]: the state after d bytes of `prev`
  for (const auto& e : entries) {
    const std::string* prev = nullptr;
    path.assign(1, state);
    for (int32_t id : e->uncertain) {
      if (TestBit(*bits, id)) continue;
      const std::string& b = vocab_->bytes(id);
      size_t same = 0;
      if (prev != nullptr) {
        const size_t limit = std::min({prev->size(), b.size(), path.size() - 1});
        while (same < limit && (*prev)[same] == b[same]) ++same;
      }
      path.resize(same + 1);
      prev = &b;
      bool ok = true;
      for (size_t i = same; i < b.size() && ok; ++i) {
        const uint8_t byte = static_cast<uint8_t>(b[i]);
        const int32_t next =
            states_[path.back()].next_bytes.test(byte) ? Transition(path.back(), byte) : -1;
        if (next < 0 || overflow_) {
          ok = false;
        } else {
          path.push_back(next);
        }
      }
      if (overflow_) return true;  // Mask reports it
      if (ok && (budget < 0 || states_[path.back()].need <= budget)) {
        SetBit(bits, id);
        *max_need = std::max<int64_t>(*max_need, states_[path.back()].need);
      }
    }
  }
  return true;
}

absl::StatusOr<std::string> Matcher::Mask(int64_t budget) {
  work_ = 0;
  std::vector<const Frame*> key = frames_;
  if (can_end_) key.push_back(nullptr);
  const size_t n_bytes = (static_cast<size_t>(vocab_->size()) + 7) / 8;
  // Memoized states and transitions, bounded: dropped between masks when they grow large.
  if (transitions_.size() > kMaxTransitions) ClearMemo();
  auto it = cache_.find(key);
  if (it != cache_.end() && (budget < 0 || budget >= it->second.max_need)) {
    ++cache_hits_;
    return it->second.bits;
  }
  State current;
  current.frames = frames_;
  current.can_end = can_end_;
  const int32_t state = InternState(std::move(current));
  if (it == cache_.end()) {
    ++cache_misses_;
    Cached fresh;
    fresh.bits.assign(n_bytes, '\0');
    if (table_ == nullptr || !MaskFromTable(state, -1, &fresh.bits, &fresh.max_need)) {
      fresh.bits.assign(n_bytes, '\0');
      fresh.max_need = 0;
      Walk(0, state, -1, &fresh.bits, &fresh.max_need);
    }
    if (overflow_) {
      return absl::ResourceExhaustedError(
          "the grammar is too ambiguous to track (too many parse stacks)");
    }
    AddEos(&fresh.bits);
    if (cache_bytes_ + n_bytes > kMaxCacheBytes) {
      cache_.clear();
      cache_bytes_ = 0;
    }
    cache_bytes_ += n_bytes;
    it = cache_.emplace(std::move(key), std::move(fresh)).first;
  } else {
    ++cache_hits_;
  }
  if (budget < 0 || budget >= it->second.max_need) return it->second.bits;
  // A tight budget: walk again keeping only tokens that leave room to finish (not cached: the
  // budget shrinks with every token).
  std::string bits(n_bytes, '\0');
  int64_t unused = 0;
  if (table_ == nullptr || !MaskFromTable(state, budget, &bits, &unused)) {
    bits.assign(n_bytes, '\0');
    Walk(0, state, budget, &bits, &unused);
  }
  if (overflow_) {
    return absl::ResourceExhaustedError(
        "the grammar is too ambiguous to track (too many parse stacks)");
  }
  AddEos(&bits);
  return bits;
}

}  // namespace shardserve::grammar
