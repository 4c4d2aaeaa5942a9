#include "router/block_allocator.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace shardserve {

BlockAllocator::BlockAllocator(int64_t num_blocks, int64_t block_size, bool prefix_caching)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      prefix_caching_(prefix_caching),
      refs_(num_blocks, 0),
      cached_(num_blocks),
      is_cached_(num_blocks, false),
      lru_tick_(num_blocks, 0) {
  CHECK(num_blocks >= 0 && block_size > 0);
  for (int64_t i = 0; i < num_blocks; ++i) free_.insert(free_.end(), static_cast<int32_t>(i));
}

uint64_t BlockAllocator::ChainHash(uint64_t parent, absl::Span<const int32_t> block_tokens) {
  return absl::HashOf(parent, block_tokens);
}

int32_t BlockAllocator::Lookup(uint64_t parent, absl::Span<const int32_t> block_tokens,
                               uint64_t* hash) const {
  *hash = ChainHash(parent, block_tokens);
  auto it = by_hash_.find(*hash);
  if (it == by_hash_.end()) return -1;
  const Cached& c = cached_[it->second];
  if (c.parent != parent ||
      !std::equal(c.tokens.begin(), c.tokens.end(), block_tokens.begin(), block_tokens.end())) {
    return -1;  // a hash collision: not this prefix
  }
  return it->second;
}

int64_t BlockAllocator::CachedPrefixBlocks(absl::Span<const int32_t> tokens,
                                           int64_t max_blocks) const {
  if (!prefix_caching_) return 0;
  const int64_t n = std::min<int64_t>(max_blocks, tokens.size() / block_size_);
  uint64_t parent = kRootHash;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t hash;
    if (Lookup(parent, tokens.subspan(i * block_size_, block_size_), &hash) < 0) return i;
    parent = hash;
  }
  return n;
}

std::vector<int32_t> BlockAllocator::AcquirePrefix(absl::Span<const int32_t> tokens,
                                                   int64_t max_blocks, uint64_t* last_hash) {
  std::vector<int32_t> out;
  *last_hash = kRootHash;
  if (!prefix_caching_) return out;
  const int64_t n = std::min<int64_t>(max_blocks, tokens.size() / block_size_);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t hash;
    const int32_t b = Lookup(*last_hash, tokens.subspan(i * block_size_, block_size_), &hash);
    if (b < 0) break;
    if (refs_[b]++ == 0) evictable_.erase(lru_tick_[b]);
    out.push_back(b);
    *last_hash = hash;
  }
  return out;
}

void BlockAllocator::Uncache(int32_t block) {
  by_hash_.erase(cached_[block].hash);
  cached_[block] = Cached();
  is_cached_[block] = false;
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int64_t count) {
  if (count < 0 || count > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat(count, " KV blocks requested, ", num_free(), " free"));
  }
  std::vector<int32_t> out;
  out.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    int32_t b;
    if (!free_.empty()) {
      b = *free_.begin();
      free_.erase(free_.begin());
    } else {
      auto oldest = evictable_.begin();
      b = oldest->second;
      evictable_.erase(oldest);
      Uncache(b);
      ++evictions_;
    }
    refs_[b] = 1;
    out.push_back(b);
  }
  return out;
}

void BlockAllocator::Free(absl::Span<const int32_t> blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const int32_t b = *it;
    CHECK(b >= 0 && b < num_blocks_) << "block " << b;
    CHECK(refs_[b] > 0) << "block " << b << " freed without a reference";
    if (--refs_[b] > 0) continue;
    if (is_cached_[b]) {
      lru_tick_[b] = ++tick_;
      evictable_.emplace(tick_, b);
    } else {
      free_.insert(b);
    }
  }
}

uint64_t BlockAllocator::Commit(int32_t block, uint64_t parent,
                                absl::Span<const int32_t> block_tokens) {
  CHECK(block >= 0 && block < num_blocks_ && refs_[block] > 0) << "block " << block;
  CHECK(static_cast<int64_t>(block_tokens.size()) == block_size_);
  uint64_t hash = ChainHash(parent, block_tokens);
  if (!prefix_caching_ || is_cached_[block]) return hash;
  auto [it, inserted] = by_hash_.emplace(hash, block);
  if (!inserted) return hash;  // another block holds this prefix (or collides): stay private
  cached_[block] = {hash, parent, std::vector<int32_t>(block_tokens.begin(), block_tokens.end())};
  is_cached_[block] = true;
  return hash;
}

void BlockAllocator::DropCache() {
  for (auto& [tick, b] : evictable_) free_.insert(b);
  evictable_.clear();
  for (int64_t b = 0; b < num_blocks_; ++b) {
    if (is_cached_[b]) Uncache(static_cast<int32_t>(b));
  }
  by_hash_.clear();
}

void BlockAllocator::CheckInvariants() const {
  int64_t referenced = 0, cached = 0;
  for (int64_t b = 0; b < num_blocks_; ++b) {
    const bool in_free = free_.contains(static_cast<int32_t>(b));
    const bool in_lru = is_cached_[b] && refs_[b] == 0 && evictable_.contains(lru_tick_[b]) &&
                        evictable_.at(lru_tick_[b]) == b;
    CHECK(refs_[b] >= 0) << "block " << b;
    if (refs_[b] > 0) {
      ++referenced;
      CHECK(!in_free) << "block " << b << " is held and free";
    } else if (is_cached_[b]) {
      CHECK(in_lru && !in_free) << "unreferenced cached block " << b << " is not evictable";
    } else {
      CHECK(in_free) << "unreferenced block " << b << " is lost";
    }
    if (is_cached_[b]) {
      ++cached;
      auto it = by_hash_.find(cached_[b].hash);
      CHECK(it != by_hash_.end() && it->second == b) << "cached block " << b << " not indexed";
    }
  }
  CHECK(cached == static_cast<int64_t>(by_hash_.size())) << "hash index has stale entries";
  CHECK(referenced + static_cast<int64_t>(free_.size() + evictable_.size()) == num_blocks_)
      << "blocks are counted twice or lost";
}

}  // namespace shardserve
