// Scheduler: continuous batching for one pipeline replica.
//
// Sequences wait in arrival order until max_seqs allows them in and the BlockAllocator can give
// them KV blocks for their whole token log (prompt, plus what they generated before a
// preemption). With prefix caching, the leading full blocks already cached are shared instead,
// and the sequence starts computing after them (always at least its last token, whose logits it
// needs). Each call to NextPlan() builds one micro-batch: decode tokens first, then prompt chunks
// up to max_batch_tokens, from sequences that are not already in flight, so up to max_in_flight
// micro-batches (one per pipeline stage) run on disjoint sequences. A sequence whose next token
// needs a new block and finds none preempts the most recently arrived running sequence that is
// not in flight (possibly itself): its blocks are freed (the full ones stay cached, so its
// recompute is mostly a cache hit), the stages drop it, and it waits at the head of the queue to
// recompute its token log; nothing it produced is lost. Complete() applies a step's sampled
// tokens, advances each sequence, commits its newly full blocks to the prefix cache and reports
// what the client must see. Finished and cancelled sequences free their blocks at once, and the
// next plan carries their ids so that every stage drops them too.
//
// Not thread-safe: the replica that owns it serialises every call.
#ifndef SHARDSERVE_ROUTER_SCHEDULER_H_
#define SHARDSERVE_ROUTER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/block_allocator.h"
#include "shardserve/v1/inference.pb.h"
#include "shardserve/v1/worker.pb.h"

namespace shardserve {

namespace grammar {
class Matcher;
}  // namespace grammar

// One request's sequence: its token log (prompt, then generated) and where it stands.
// A request whose pipelines fail more often than this while running it ends with UNAVAILABLE
// naming the last failure, instead of moving on again.
inline constexpr int kMaxPipelineFailures = 3;

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;
  int64_t prompt_len = 0;
  // The output continues a text or token-id prompt (not a chat): its text keeps the first
  // token's leading space.
  bool follows_text = false;
  int32_t max_tokens = 1;
  absl::flat_hash_set<int32_t> stop_ids;  // EOS and request stop ids
  v1::StepSampling sampling;
  // Structured output (router/structured_output.h): the matcher over what was generated so far
  // and the mask for the next token (SequencePlan.allowed_tokens); null and empty when free.
  // They travel with the token log, so a failover or preemption resumes under the same state.
  std::shared_ptr<grammar::Matcher> matcher;
  std::string allowed_tokens;

  // Scheduler state.
  uint64_t arrival = 0;      // Enqueue order; the latest arrival is preempted first
  int64_t num_computed = 0;  // tokens whose K/V every stage holds
  std::vector<int32_t> blocks;
  int64_t committed_blocks = 0;                     // leading blocks registered in the prefix cache
  uint64_t chain_hash = BlockAllocator::kRootHash;  // of the last committed block
  int64_t cached_tokens = 0;  // prompt tokens found in the prefix cache at first admission
  int preemptions = 0;
  int pipeline_failures = 0;  // pipelines that failed while running it (see kMaxPipelineFailures)
  bool queued = false;        // in the waiting queue
  bool on_workers = false;    // the stages hold state for it
  bool in_flight = false;
  bool cancelled = false;
  bool finished = false;

  // Set (before any replica is told) when the client is gone, so that a pipeline taking the
  // sequence over from a failed one drops it instead.
  std::atomic<bool> client_gone{false};

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  // Forgets where it stood on a pipeline, keeping its token log: it will be re-prefilled.
  void ResetForRecompute();
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 256;
  int max_seqs = 64;
  int max_in_flight = 1;
  int64_t vocab_size = 0;  // to validate sampled ids
};

// Cumulative prefix-cache and preemption counts for one pipeline.
struct SchedulerCounters {
  uint64_t prefix_query_tokens = 0;  // token-log tokens looked up at admission
  uint64_t prefix_hit_tokens = 0;    // of which found in the cache
  uint64_t preemptions = 0;
};

// What one sampled token means for its sequence.
struct TokenEvent {
  std::shared_ptr<Sequence> sequence;
  v1::SampledToken token;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  // Not OK: the sequence ended with this error (its output format could not go on).
  absl::Status error;
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, BlockAllocator* allocator);

  // Queues a new sequence (num_computed 0, no blocks).
  void Enqueue(std::shared_ptr<Sequence> sequence);

  // The next micro-batch, or a plan with only release ids, or nullopt when there is nothing to
  // send. Plans with sequences count as in flight until Complete().
  std::optional<v1::StepPlan> NextPlan();

  // Applies the last stage's result. INTERNAL when it does not match the step it answers.
  absl::StatusOr<std::vector<TokenEvent>> Complete(const v1::StepsResponse& result);

  // Ends a sequence now (a stop string matched, or it was cancelled while not in flight);
  // a cancelled sequence in flight ends when its step completes.
  void Cancel(uint64_t id);
  void Finish(uint64_t id);

  // Drops every sequence (the pipeline failed) and returns those that had not finished, reset
  // for recompute elsewhere.
  std::vector<std::shared_ptr<Sequence>> AbandonAll();

  // When the oldest micro-batch in flight was planned; nullopt when none is.
  std::optional<absl::Time> OldestInFlight() const;

  // A health probe (StepPlan.canary: one token of sequence kCanarySequenceId in a borrowed
  // block, greedy), only when nothing is in flight and a block can be had; it carries pending
  // releases and counts as in flight until Complete(), which returns no events for it.
  std::optional<v1::StepPlan> CanaryPlan();
  static constexpr uint64_t kCanarySequenceId = ~uint64_t{0};

  int in_flight() const { return static_cast<int>(batches_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t load() const { return num_waiting() + num_running(); }
  // KV blocks the waiting sequences' token logs fill.
  int64_t waiting_blocks() const;
  const BlockAllocator& allocator() const { return *allocator_; }
  const SchedulerCounters& counters() const { return counters_; }

 private:
  struct Entry {
    std::shared_ptr<Sequence> sequence;
    int64_t chunk = 0;
    bool sample = false;
  };
  struct Batch {
    std::vector<Entry> entries;
    absl::Time planned;
    int32_t canary_block = -1;  // >= 0: a canary, holding this block
  };

  void Admit();
  // Gives `s` blocks for `tokens` positions, preempting later arrivals (or `s` itself) when the
  // pool is short. False when `s` cannot run this step.
  bool EnsureBlocks(const std::shared_ptr<Sequence>& s, int64_t tokens);
  void Preempt(const std::shared_ptr<Sequence>& s);
  void CommitFullBlocks(Sequence& s);
  void FinishSequence(const std::shared_ptr<Sequence>& s);

  const SchedulerOptions options_;
  BlockAllocator* const allocator_;
  std::deque<std::shared_ptr<Sequence>> waiting_;
  std::vector<std::shared_ptr<Sequence>> running_;  // admission order
  std::map<uint64_t, Batch> batches_;               // in flight, by step id
  std::vector<uint64_t> pending_releases_;
  uint64_t next_step_ = 1;
  uint64_t next_arrival_ = 1;
  SchedulerCounters counters_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_SCHEDULER_H_
