// Constrained decoding: which tokens may come next so that the output stays a prefix of a
// sentence of a Grammar, and always can be finished.
//
// The matcher is a pushdown automaton over bytes run as a set of stacks (as llama.cpp's grammar
// sampler does): each stack is a path of positions in the grammar's alternatives, top first, and
// a byte advances every stack whose top position accepts it. Stacks are hash-consed (equal
// stacks are one object), so a state is a sorted list of pointers, cheap to compare and to key
// a cache by. A token's mask walks a byte trie of the vocabulary once, advancing the state byte
// by byte and pruning a whole subtree as soon as no stack survives; masks are cached per state,
// so the positions a generation keeps returning to (inside a string, between digits) cost a
// lookup.
//
// Context-independent tokens: most of what a stack accepts is decided by its top few positions
// alone. A TokenTable, shared by every matcher of one grammar and vocabulary, holds for each
// such top (the positions of a stack's kContextDepth topmost frames) the tokens it accepts
// whatever lies below, and the few that reach below it (a string's closing quote followed by
// more bytes), which are checked against the whole state. A new state's mask is then the union
// of its stacks' entries plus those checks, instead of a walk of the whole vocabulary (the
// approach of XGrammar's adaptive token masks). Each entry costs one walk, once per grammar.
//
// Budget: each stack knows the fewest bytes that would finish the output from it. Given how
// many tokens may still follow, Mask() allows only tokens after which the output can still be
// finished, counting one byte per token (a vocabulary with byte tokens can always do that), so
// a constrained output cut by max_tokens still parses.
//
// A Matcher is used by one thread at a time; Grammar and Vocabulary are immutable and shared.
#ifndef SHARDSERVE_MODEL_GRAMMAR_MATCHER_H_
#define SHARDSERVE_MODEL_GRAMMAR_MATCHER_H_

#include <bitset>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model/grammar/grammar.h"

namespace shardserve {
class Tokenizer;
}  // namespace shardserve

namespace shardserve::grammar {

// What each token writes, and a trie over those bytes. Built once per tokenizer.
class Vocabulary {
 public:
  // token_bytes[i]: the bytes token i adds to the output; empty for a token never allowed.
  // eos_ids: the tokens that end the output (allowed once the output is a whole match).
  Vocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> eos_ids);
  // Special tokens other than the end-of-generation ones are never allowed. `size` > 0 is the
  // model's vocabulary size (its logits), which may differ from the tokenizer's: ids the
  // tokenizer lacks are never allowed, ids past `size` do not exist.
  static std::shared_ptr<const Vocabulary> FromTokenizer(const Tokenizer& tokenizer,
                                                         int32_t size = 0);

  int32_t size() const { return static_cast<int32_t>(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[id]; }
  bool is_eos(int32_t id) const;
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // Whether every single byte is some token's whole text (then the budget rule holds).
  bool has_all_bytes() const { return has_all_bytes_; }
  // The longest token's bytes (the trie's depth).
  size_t max_length() const { return max_length_; }

  struct Node {
    uint32_t children_begin = 0;
    uint32_t children_end = 0;
    uint32_t tokens_begin = 0;  // into tokens(): the tokens whose bytes end here
    uint32_t tokens_end = 0;
    uint32_t subtree_end = 0;  // tokens() of the nodes below: [tokens_end, subtree_end)
    uint8_t byte = 0;
  };
  const Node& node(uint32_t i) const { return nodes_[i]; }
  // The tokens in the trie, in the order of their bytes; node(i) holds a range of them.
  int32_t node_token(uint32_t i) const { return node_tokens_[i]; }

 private:
  void Fill(uint32_t node, const std::vector<int32_t>& sorted, size_t lo, size_t hi, size_t depth);

  std::vector<std::string> bytes_;
  std::vector<int32_t> eos_ids_;
  std::vector<Node> nodes_;  // nodes_[0] is the root (the empty prefix)
  std::vector<int32_t> node_tokens_;
  bool has_all_bytes_ = false;
  size_t max_length_ = 0;
};

class Matcher;

// The context-independent tokens of a grammar's stack tops, filled as matchers meet them.
// Thread-safe; share one per (grammar, vocabulary), as compiled grammars are shared.
class TokenTable {
 public:
  // Frames of a stack that make its key: three hold a JSON string's character, its repetition
  // and its closing quote, so that only tokens running past the quote depend on the context.
  static constexpr int kContextDepth = 3;
  // Bytes of entries kept per table; past it, new entries are computed but not kept.
  static constexpr size_t kMaxBytes = 8 << 20;
  // Key element for a stack that ends within kContextDepth frames (nothing lies below).
  static constexpr uint32_t kRootMarker = ~0u;

  struct Entry {
    // Tokens accepted whatever lies below: a bitset of (vocabulary + 7) / 8 bytes when there
    // are many, else their ids.
    std::string accepted_bits;
    std::vector<int32_t> accepted_ids;
    // Tokens that reach below the key's frames, to check in context, in the vocabulary trie's
    // order (so that checks share their prefixes).
    std::vector<int32_t> uncertain;
    // The fewest and most bytes an accepted token leaves to finish the key's frames (what lies
    // below adds its own), and the accepted tokens that leave more than the fewest, with theirs:
    // under a tight max_tokens budget, these are the ones it may drop.
    uint32_t min_need = 0;
    uint32_t max_need = 0;
    std::vector<std::pair<int32_t, uint32_t>> needy;
    bool overflow = false;  // the walk hit the matcher's bounds: callers walk in full
  };

  TokenTable(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const Vocabulary> vocabulary);
  ~TokenTable();

  const std::shared_ptr<const Grammar>& grammar() const { return grammar_; }
  const std::shared_ptr<const Vocabulary>& vocabulary() const { return vocab_; }
  // The entry for the stack top `key` (positions, top first, then kRootMarker if the stack
  // ends there), computed on first use.
  std::shared_ptr<const Entry> Get(const std::vector<uint32_t>& key);
  // Entries computed, and lookups answered by one already kept.
  int64_t entries_built() const;
  int64_t hits() const;
  // Bytes of the entries kept.
  size_t bytes() const;

 private:
  const std::shared_ptr<const Grammar> grammar_;
  const std::shared_ptr<const Vocabulary> vocab_;
  mutable absl::Mutex mu_;
  std::unique_ptr<Matcher> scratch_ ABSL_GUARDED_BY(mu_);  // runs the walks
  absl::flat_hash_map<std::vector<uint32_t>, std::shared_ptr<const Entry>> entries_
      ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t built_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
};

class Matcher {
 public:
  // Interned stacks per matcher, bounding memory for ambiguous grammars.
  static constexpr size_t kMaxFrames = 1 << 18;
  // Parse stacks alive at once, and positions visited to close one byte's step: bound the work
  // per byte (JSON and tool-call grammars keep a handful).
  static constexpr size_t kMaxStacks = 1024;
  static constexpr size_t kMaxClosure = 1 << 16;
  // Positions visited by one Accept or Mask in all: bounds the time of a mask over a grammar
  // ambiguous enough to stay just under the other bounds at every byte.
  static constexpr size_t kMaxWork = 1 << 22;
  // Bytes of cached masks per matcher.
  static constexpr size_t kMaxCacheBytes = 4 << 20;
  // Memoized transitions per matcher before they are dropped.
  static constexpr size_t kMaxTransitions = 1 << 20;

  // Masks of new states from `table`'s entries.
  explicit Matcher(std::shared_ptr<TokenTable> table);
  // Masks of new states by a walk of the whole vocabulary trie (no table).
  Matcher(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const Vocabulary> vocabulary);
  Matcher(const Matcher&) = delete;
  Matcher& operator=(const Matcher&) = delete;

  // Feeds token `id`. INVALID_ARGUMENT when the grammar does not allow it here (the state is
  // then unchanged); an end-of-generation token is allowed when CanEnd().
  absl::Status Accept(int32_t id);
  // The output so far is a whole match.
  bool CanEnd() const { return can_end_; }
  // Nothing may follow: the output is a whole match that no byte extends, or it took an EOS.
  bool Finished() const { return finished_ || (frames_.empty() && can_end_); }
  // Fewest bytes that finish the output from here.
  int64_t MinBytesToEnd() const;

  // The tokens allowed next: bit i of byte i/8 (least significant first) for token i,
  // (vocabulary size + 7) / 8 bytes. With `budget` >= 0, only tokens after which the output can
  // be finished in `budget` more tokens. RESOURCE_EXHAUSTED when the grammar is too ambiguous
  // to track (kMaxFrames, kMaxStacks, kMaxClosure, kMaxWork).
  absl::StatusOr<std::string> Mask(int64_t budget);

  // Mask lookups answered from the cache, and computed.
  int64_t cache_hits() const { return cache_hits_; }
  int64_t cache_misses() const { return cache_misses_; }

 private:
  friend class TokenTable;
  struct Frame {
    uint32_t pos;
    uint32_t rest;  // fewest bytes to empty this stack
    const Frame* parent;
  };
  struct State {
    std::vector<const Frame*> frames;  // sorted, unique
    bool can_end = false;
    bool popped = false;  // a path returned into context_ (TokenTable walks only)
    void Clear() {
      frames.clear();
      can_end = false;
      popped = false;
    }
  };
  struct Cached {
    std::string bits;
    int64_t max_need = 0;  // the largest need of an allowed token
  };

  const Frame* Intern(uint32_t pos, const Frame* parent);
  void Expand(uint32_t pos, const Frame* parent, State* out);
  void Advance(const State& in, uint8_t byte, State* out);
  static void Normalize(State* s);
  void AddEos(std::string* bits) const;
  // Calls f(c, child, next, states_[next]) for each child c of trie node `node` whose byte some
  // stack of `state` takes (next: the state after it), until the bounds overflow.
  template <typename F>
  void ForEachChild(uint32_t node, int32_t state, F&& f);
  // Walks the trie below `node` from `state` (an index into states_), setting the bits of the
  // tokens that survive (with `budget` >= 0, only those that leave room to finish).
  void Walk(uint32_t node, int32_t state, int64_t budget, std::string* bits, int64_t* max_need);
  int32_t InternState(State&& s);
  // This state's mask from the table's entries (OR of the stacks' accepted tokens, and their
  // uncertain ones checked here). False when an entry could not be built: walk instead.
  // With `budget` >= 0, only tokens that leave room to finish in that many.
  bool MaskFromTable(int32_t state, int64_t budget, std::string* bits, int64_t* max_need);
  // TokenTable's walk: the entry for the stack top `key`, on a matcher of its own.
  std::shared_ptr<TokenTable::Entry> BuildEntry(const std::vector<uint32_t>& key);
  // Sets the tokens below `node` that `state` accepts without leaving the key's frames, and
  // records the ranges of trie tokens below a point where a path left them.
  void LocalWalk(uint32_t node, int32_t state, std::string* accepted,
                 std::vector<std::pair<uint32_t, uint32_t>>* below,
                 std::vector<std::pair<int32_t, uint32_t>>* needs);
  void ClearMemo();
  // The state after `byte`, or -1 when no stack survives it (memoized).
  int32_t Transition(int32_t state, uint8_t byte);

  std::shared_ptr<const Grammar> grammar_;
  std::shared_ptr<const Vocabulary> vocab_;
  std::shared_ptr<TokenTable> table_;  // may be null
  // Stands for what lies below a TokenTable key's frames: a path that pops it needs context.
  const Frame context_{~0u, 0, nullptr};
  std::deque<Frame> frame_store_;
  absl::flat_hash_map<std::pair<uint32_t, const Frame*>, const Frame*> interned_;
  bool overflow_ = false;
  size_t work_ = 0;  // positions visited by the current Accept or Mask

  absl::flat_hash_set<std::pair<uint32_t, const Frame*>> expanded_;  // within one closure

  std::vector<const Frame*> frames_;
  bool can_end_ = false;
  bool finished_ = false;

  // Interned states and the transitions between them, so that a trie walk costs one lookup per
  // node once a state's successors are known.
  struct StateInfo {
    std::vector<const Frame*> frames;
    bool can_end = false;
    bool popped = false;
    uint32_t need = 0;            // fewest bytes to finish from here
    std::bitset<256> next_bytes;  // bytes some stack accepts
  };
  std::deque<StateInfo> states_;
  absl::flat_hash_map<std::vector<const Frame*>, int32_t> state_ids_;
  absl::flat_hash_map<uint64_t, int32_t> transitions_;  // (state << 8 | byte) -> state or -1
  absl::flat_hash_map<std::vector<const Frame*>, Cached> cache_;
  size_t cache_bytes_ = 0;
  int64_t cache_hits_ = 0;
  int64_t cache_misses_ = 0;
};

}  // namespace shardserve::grammar

#endif  // SHARDSERVE_MODEL_GRAMMAR_MATCHER_H_
