// Scheduler: continuous batching for one pipeline replica.
//
// Sequences wait in admission order until max_seqs allows them in and the BlockAllocator can
// reserve KV blocks for their whole prompt + max_tokens (so a running sequence never runs out;
// preemption is a later refinement). Each call to NextPlan() builds one micro-batch: decode
// tokens first, then prompt chunks up to max_batch_tokens, from sequences that are not already
// in flight, so up to max_in_flight micro-batches (one per pipeline stage) run on disjoint
// sequences. Complete() applies a step's sampled tokens, advances each sequence and reports
// what the client must see. Finished and cancelled sequences free their blocks at once, and the
// next plan carries their ids so that every stage drops them too.
//
// Not thread-safe: the replica that owns it serialises every call.
#ifndef SHARDSERVE_ROUTER_SCHEDULER_H_
#define SHARDSERVE_ROUTER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "router/block_allocator.h"
#include "shardserve/v1/inference.pb.h"
#include "shardserve/v1/worker.pb.h"

namespace shardserve {

// One request's sequence: its token log (prompt, then generated) and where it stands.
struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;
  int64_t prompt_len = 0;
  int32_t max_tokens = 1;
  absl::flat_hash_set<int32_t> stop_ids;  // EOS and request stop ids
  v1::StepSampling sampling;

  // Scheduler state.
  int64_t num_computed = 0;  // tokens whose K/V every stage holds
  std::vector<int32_t> blocks;
  bool in_flight = false;
  bool cancelled = false;
  bool finished = false;

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 256;
  int max_seqs = 64;
  int max_in_flight = 1;
  int64_t vocab_size = 0;  // to validate sampled ids
};

// What one sampled token means for its sequence.
struct TokenEvent {
  std::shared_ptr<Sequence> sequence;
  v1::SampledToken token;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
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

  // Drops every sequence (the pipeline failed) and returns those that had not finished.
  std::vector<std::shared_ptr<Sequence>> AbandonAll();

  int in_flight() const { return static_cast<int>(batches_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t load() const { return num_waiting() + num_running(); }
  const BlockAllocator& allocator() const { return *allocator_; }

 private:
  struct Entry {
    std::shared_ptr<Sequence> sequence;
    int64_t chunk = 0;
    bool sample = false;
  };

  void Admit();
  void FinishSequence(const std::shared_ptr<Sequence>& s);

  const SchedulerOptions options_;
  BlockAllocator* const allocator_;
  std::deque<std::shared_ptr<Sequence>> waiting_;
  std::vector<std::shared_ptr<Sequence>> running_;  // admission order
  std::map<uint64_t, std::vector<Entry>> batches_;  // in flight, by step id
  std::vector<uint64_t> pending_releases_;
  uint64_t next_step_ = 1;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_SCHEDULER_H_
