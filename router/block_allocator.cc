#include "router/block_allocator.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace shardserve {

BlockAllocator::BlockAllocator(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  CHECK(num_blocks >= 0 && block_size > 0);
  for (int64_t i = 0; i < num_blocks; ++i) free_.insert(free_.end(), static_cast<int32_t>(i));
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int64_t count) {
  if (count < 0 || count > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat(count, " KV blocks requested, ", num_free(), " free"));
  }
  std::vector<int32_t> out;
  out.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    out.push_back(*free_.begin());
    free_.erase(free_.begin());
  }
  return out;
}

void BlockAllocator::Free(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    CHECK(b >= 0 && b < num_blocks_) << "block " << b;
    CHECK(free_.insert(b).second) << "block " << b << " freed twice";
  }
}

}  // namespace shardserve
