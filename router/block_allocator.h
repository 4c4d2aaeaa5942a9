// BlockAllocator: the router's pool of KV block ids for one pipeline, with prefix caching.
//
// Every stage of a pipeline keeps K/V under the same block ids, so one allocator per pipeline
// decides them all. Blocks are reference-counted: a sequence holds one reference on each block
// of its table.
//
// Prefix caching (on unless disabled): once every stage holds the K/V of a full block, the
// scheduler commits it under a chain hash of all tokens up to and including the block
// (ChainHash(parent, block tokens), the first block's parent being kRootHash). A later sequence
// whose tokens start the same way takes references on those blocks (AcquirePrefix) and computes
// only the rest; shared blocks are only ever read, since a sequence writes K/V at positions past
// its cached prefix. A cached block whose last reference goes stays cached, on an LRU list, and
// is evicted (its hash forgotten) only when Allocate runs out of never-cached blocks, so a block
// in use is never handed out again. Each cached block also keeps its tokens and its parent's
// hash, and a lookup compares them, so a 64-bit hash collision cannot serve the wrong K/V.
//
// Fresh ids are handed out lowest-first (which keeps the touched part of each stage's pool
// small). Not thread-safe: its owner serialises calls.
#ifndef SHARDSERVE_ROUTER_BLOCK_ALLOCATOR_H_
#define SHARDSERVE_ROUTER_BLOCK_ALLOCATOR_H_

#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace shardserve {

class BlockAllocator {
 public:
  static constexpr uint64_t kRootHash = 0x5348415244534552ULL;

  BlockAllocator(int64_t num_blocks, int64_t block_size, bool prefix_caching = true);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks Allocate can hand out: never-cached free blocks plus unreferenced cached ones.
  int64_t num_free() const { return static_cast<int64_t>(free_.size() + evictable_.size()); }
  // Blocks some sequence holds.
  int64_t num_used() const { return num_blocks_ - num_free(); }
  // Blocks holding a committed prefix, referenced or not.
  int64_t num_cached() const { return static_cast<int64_t>(by_hash_.size()); }
  // Cached blocks no sequence holds (the first to go when fresh blocks run out).
  int64_t num_evictable() const { return static_cast<int64_t>(evictable_.size()); }
  uint64_t evictions() const { return evictions_; }

  // Blocks needed to hold `tokens` positions.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  static uint64_t ChainHash(uint64_t parent, absl::Span<const int32_t> block_tokens);

  // How many leading full blocks of `tokens` are cached, at most max_blocks. Takes nothing.
  int64_t CachedPrefixBlocks(absl::Span<const int32_t> tokens, int64_t max_blocks) const;
  // The cached blocks holding the longest prefix of `tokens` in whole blocks (at most
  // max_blocks), with one reference taken on each; `last_hash` gets the chain hash of the last
  // one (kRootHash when none).
  std::vector<int32_t> AcquirePrefix(absl::Span<const int32_t> tokens, int64_t max_blocks,
                                     uint64_t* last_hash);

  // `count` fresh blocks with one reference each, evicting least recently used unreferenced
  // cached blocks when no never-cached block is left; RESOURCE_EXHAUSTED (taking nothing) when
  // fewer than `count` can be had.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t count);
  // Drops one reference on each block, in reverse order (so a chain's tail is evicted before
  // its head). An id out of range or without references is a programmer error and aborts.
  void Free(absl::Span<const int32_t> blocks);

  // Registers `block` (held, and full: every stage has its K/V) as holding `block_tokens`
  // after the prefix whose chain hash is `parent`; returns the block's chain hash. When
  // another block already holds that prefix, this one stays private and the hash is the same.
  uint64_t Commit(int32_t block, uint64_t parent, absl::Span<const int32_t> block_tokens);

  // Forgets every cached prefix (the stages lost their K/V). References are untouched.
  void DropCache();

  // Aborts when the free, evictable, referenced and cached sets disagree (tests).
  void CheckInvariants() const;

 private:
  struct Cached {
    uint64_t hash = 0;
    uint64_t parent = 0;
    std::vector<int32_t> tokens;
  };

  void Uncache(int32_t block);
  int32_t Lookup(uint64_t parent, absl::Span<const int32_t> block_tokens, uint64_t* hash) const;

  const int64_t num_blocks_;
  const int64_t block_size_;
  const bool prefix_caching_;
  std::vector<int32_t> refs_;
  std::vector<Cached> cached_;             // per block, meaningful when is_cached_
  std::vector<bool> is_cached_;            // per block
  std::vector<uint64_t> lru_tick_;         // per evictable block, its key in evictable_
  std::set<int32_t> free_;                 // unreferenced, not cached
  std::map<uint64_t, int32_t> evictable_;  // unreferenced, cached; oldest first
  absl::flat_hash_map<uint64_t, int32_t> by_hash_;
  uint64_t tick_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_BLOCK_ALLOCATOR_H_
