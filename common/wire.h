// Limits shared by both ends of the cluster's wire protocol: the router checks its flags and
// requests against them, workers check every message from the network against them. One place,
// so the two ends cannot drift.
#ifndef SHARDSERVE_COMMON_WIRE_H_
#define SHARDSERVE_COMMON_WIRE_H_

#include <cstdint>

namespace shardserve {

// Largest gRPC message between router and workers and between workers (plans, activations).
inline constexpr int kMaxMessageBytes = 512 << 20;
// KV blocks in one pipeline's pool (--kv-blocks, LoadShardRequest.kv_num_blocks).
inline constexpr int64_t kMaxKvBlocks = int64_t{1} << 22;
// Tokens per KV block (--kv-block-size, LoadShardRequest.kv_block_size).
inline constexpr int kMaxKvBlockSize = 1024;
// Tokens in one step plan (--max-batch-tokens, LoadShardRequest.max_step_tokens, activation
// rows).
inline constexpr int64_t kMaxStepTokens = int64_t{1} << 16;
// Largest top_logprobs a request may ask for.
inline constexpr int kMaxTopLogprobs = 20;
// The largest seed drawn for a request that sets none (the router's, `generate`'s): seeds stay
// exact as JSON numbers (doubles) in any client.
inline constexpr uint64_t kMaxDrawnSeed = (uint64_t{1} << 53) - 1;
// The version of the activation-link set-up (Describe.link_version, PrepareLink, ConnectNext):
// both ends of a hop must speak the same one.
inline constexpr uint32_t kLinkVersion = 1;
// Bytes of an NCCL link id (NCCL_UNIQUE_ID_BYTES; checked against nccl.h where NCCL is built).
inline constexpr int kNcclLinkIdBytes = 128;

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_WIRE_H_
