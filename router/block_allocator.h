// BlockAllocator: the router's pool of KV block ids for one pipeline.
//
// Every stage of a pipeline keeps K/V under the same block ids, so one allocator per pipeline
// decides them all. Ids are handed out lowest-first (which keeps the touched part of each
// stage's pool small) and come back with Free. Not thread-safe: its owner serialises calls.
#ifndef SHARDSERVE_ROUTER_BLOCK_ALLOCATOR_H_
#define SHARDSERVE_ROUTER_BLOCK_ALLOCATOR_H_

#include <cstdint>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace shardserve {

class BlockAllocator {
 public:
  BlockAllocator(int64_t num_blocks, int64_t block_size);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_blocks_ - num_free(); }

  // Blocks needed to hold `tokens` positions.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // `count` ids, or RESOURCE_EXHAUSTED (allocating nothing) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t count);
  // Returns ids; a double free or an id out of range is a programmer error and aborts.
  void Free(absl::Span<const int32_t> blocks);

 private:
  const int64_t num_blocks_;
  const int64_t block_size_;
  std::set<int32_t> free_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_BLOCK_ALLOCATOR_H_
