// Prefix caching and preemption in the router's BlockAllocator and Scheduler, against a fake
// pipeline that keeps one token per KV slot: a sampled token is a hash of what the block table
// says the sequence's positions hold, so any block shared wrongly, overwritten while in use or
// handed to two sequences changes the output.
#include <map>
#include <random>

#include "absl/hash/hash.h"
#include "gtest/gtest.h"
#include "router/block_allocator.h"
#include "router/scheduler.h"

namespace shardserve {
namespace {

constexpr int32_t kVocab = 1000;
constexpr int32_t kStop = 2;

// What the stages would compute: per block slot, the token written there.
class FakePipeline {
 public:
  FakePipeline(int64_t num_blocks, int64_t block_size)
      : block_size_(block_size), slots_(num_blocks * block_size, -1) {}

  // Runs a plan like the stages do and returns the last stage's answer.
  v1::StepsResponse Run(const v1::StepPlan& plan) {
    for (uint64_t id : plan.release_sequence_ids()) lengths_.erase(id);
    v1::StepsResponse r;
    r.set_step_id(plan.step_id());
    for (const v1::SequencePlan& s : plan.sequences()) {
      auto it = lengths_.find(s.sequence_id());
      const int64_t known = it == lengths_.end() ? 0 : it->second;
      if (it == lengths_.end() && s.start_pos() > 0) {
        EXPECT_EQ(s.prefix_tokens_size(), s.start_pos());
        // The shared blocks must already hold exactly these tokens.
        for (int64_t p = 0; p < s.start_pos(); ++p) {
          EXPECT_EQ(Slot(s, p), s.prefix_tokens(p)) << "sequence " << s.sequence_id() << " pos "
                                                    << p << ": a cached block was overwritten";
        }
        prefix_cached_ += s.start_pos();
      } else {
        EXPECT_EQ(s.start_pos(), known) << "sequence " << s.sequence_id();
        EXPECT_EQ(s.prefix_tokens_size(), 0);
      }
      EXPECT_GE(s.block_table_size() * block_size_, s.start_pos() + s.tokens_size());
      for (int i = 0; i < s.tokens_size(); ++i) Slot(s, s.start_pos() + i) = s.tokens(i);
      computed_ += s.tokens_size();
      const int64_t end = s.start_pos() + s.tokens_size();
      lengths_[s.sequence_id()] = end;
      if (!s.sample()) continue;
      std::vector<int32_t> context;
      for (int64_t p = 0; p < end; ++p) context.push_back(Slot(s, p));
      v1::SampledToken* t = r.add_tokens();
      t->set_sequence_id(s.sequence_id());
      t->set_token_id(NextToken(context));
    }
    return r;
  }

  static int32_t NextToken(const std::vector<int32_t>& context) {
    return 3 + static_cast<int32_t>(absl::HashOf(context) % (kVocab - 3));  // never kStop
  }

  uint64_t computed() const { return computed_; }
  uint64_t prefix_cached() const { return prefix_cached_; }

 private:
  int32_t& Slot(const v1::SequencePlan& s, int64_t pos) {
    return slots_[s.block_table(pos / block_size_) * block_size_ + pos % block_size_];
  }

  const int64_t block_size_;
  std::vector<int32_t> slots_;
  std::map<uint64_t, int64_t> lengths_;
  uint64_t computed_ = 0;
  uint64_t prefix_cached_ = 0;
};

std::shared_ptr<Sequence> MakeSequence(uint64_t id, std::vector<int32_t> prompt, int max_tokens) {
  auto s = std::make_shared<Sequence>();
  s->id = id;
  s->tokens = std::move(prompt);
  s->prompt_len = static_cast<int64_t>(s->tokens.size());
  s->max_tokens = max_tokens;
  s->stop_ids.insert(kStop);
  return s;
}

// The output a sequence must produce: NextToken applied to its own growing log.
std::vector<int32_t> Expected(std::vector<int32_t> tokens, int max_tokens) {
  std::vector<int32_t> out;
  for (int i = 0; i < max_tokens; ++i) {
    out.push_back(FakePipeline::NextToken(tokens));
    tokens.push_back(out.back());
  }
  return out;
}

// Runs plans until every sequence finished; returns each sequence's generated tokens.
std::map<uint64_t, std::vector<int32_t>> Drain(Scheduler& sched, FakePipeline& stages,
                                               BlockAllocator& blocks, int max_in_flight = 1) {
  std::map<uint64_t, std::vector<int32_t>> out;
  std::vector<v1::StepPlan> in_flight;
  for (int guard = 0; guard < 100000; ++guard) {
    while (static_cast<int>(in_flight.size()) < max_in_flight) {
      auto plan = sched.NextPlan();
      if (!plan) break;
      if (plan->sequences_size() == 0) {
        stages.Run(*plan);  // releases only: nothing comes back
        continue;
      }
      in_flight.push_back(*plan);
      blocks.CheckInvariants();
    }
    if (in_flight.empty()) return out;
    // Stages run plans in order; the first in flight completes first.
    v1::StepsResponse r = stages.Run(in_flight.front());
    in_flight.erase(in_flight.begin());
    auto events = sched.Complete(r);
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) return out;
    for (const TokenEvent& e : *events) out[e.sequence->id].push_back(e.token.token_id());
    blocks.CheckInvariants();
  }
  ADD_FAILURE() << "did not finish";
  return out;
}

std::vector<int32_t> Tokens(int n, int32_t first) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(first + i % 500);
  return t;
}

TEST(PrefixCache, SecondRequestComputesOnlyTheRestAndMatches) {
  BlockAllocator blocks(64, 16);
  FakePipeline stages(64, 16);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 1, .vocab_size = kVocab},
                  &blocks);
  std::vector<int32_t> prefix = Tokens(200, 10);
  std::vector<int32_t> a = prefix, b = prefix;
  for (int i = 0; i < 20; ++i) a.push_back(600 + i), b.push_back(700 + i);
  sched.Enqueue(MakeSequence(1, a, 8));
  auto first = Drain(sched, stages, blocks);
  EXPECT_EQ(first[1], Expected(a, 8));
  const uint64_t computed = stages.computed();
  EXPECT_EQ(computed, a.size() + 7);

  sched.Enqueue(MakeSequence(2, b, 8));
  auto second = Drain(sched, stages, blocks);
  EXPECT_EQ(second[2], Expected(b, 8));
  // 12 full blocks (192 tokens) of the shared 200 came from the cache.
  EXPECT_EQ(stages.prefix_cached(), 192u);
  EXPECT_EQ(stages.computed() - computed, b.size() - 192 + 7);
  EXPECT_EQ(sched.counters().prefix_hit_tokens, 192u);
  EXPECT_EQ(sched.counters().prefix_query_tokens, a.size() + b.size());
  EXPECT_EQ(blocks.num_used(), 0);
  EXPECT_GT(blocks.num_cached(), 12);
}

TEST(PrefixCache, IdenticalPromptStillComputesItsLastToken) {
  BlockAllocator blocks(16, 4);
  FakePipeline stages(16, 4);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 1, .vocab_size = kVocab},
                  &blocks);
  const std::vector<int32_t> p = Tokens(16, 10);  // exactly 4 full blocks
  sched.Enqueue(MakeSequence(1, p, 3));
  Drain(sched, stages, blocks);
  sched.Enqueue(MakeSequence(2, p, 3));
  auto plan = sched.NextPlan();
  ASSERT_TRUE(plan);
  // 3 blocks shared; the last block is recomputed (privately) for the logits.
  EXPECT_EQ(plan->sequences(0).start_pos(), 12);
  EXPECT_EQ(plan->sequences(0).tokens_size(), 4);
  auto events = sched.Complete(stages.Run(*plan));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].token.token_id(), Expected(p, 1)[0]);
}

TEST(PrefixCache, DisabledSharesNothing) {
  BlockAllocator blocks(64, 16, /*prefix_caching=*/false);
  FakePipeline stages(64, 16);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 1, .vocab_size = kVocab},
                  &blocks);
  const std::vector<int32_t> p = Tokens(100, 10);
  sched.Enqueue(MakeSequence(1, p, 4));
  Drain(sched, stages, blocks);
  sched.Enqueue(MakeSequence(2, p, 4));
  auto out = Drain(sched, stages, blocks);
  EXPECT_EQ(out[2], Expected(p, 4));
  EXPECT_EQ(stages.prefix_cached(), 0u);
  EXPECT_EQ(blocks.num_cached(), 0);
  EXPECT_EQ(sched.counters().prefix_hit_tokens, 0u);
}

TEST(Preemption, WorkloadLargerThanTheCacheFinishesCorrectly) {
  for (int in_flight : {1, 2}) {
    SCOPED_TRACE(in_flight);
    // 12 blocks of 4 = 48 slots; 6 sequences that each grow to 30 tokens (8 blocks).
    BlockAllocator blocks(12, 4);
    FakePipeline stages(12, 4);
    Scheduler sched(
        {.max_batch_tokens = 16, .max_seqs = 6, .max_in_flight = in_flight, .vocab_size = kVocab},
        &blocks);
    std::map<uint64_t, std::vector<int32_t>> prompts;
    for (uint64_t id = 1; id <= 6; ++id) {
      prompts[id] = Tokens(6, static_cast<int32_t>(100 * id));
      sched.Enqueue(MakeSequence(id, prompts[id], 24));
    }
    auto out = Drain(sched, stages, blocks, in_flight);
    for (uint64_t id = 1; id <= 6; ++id) EXPECT_EQ(out[id], Expected(prompts[id], 24)) << id;
    EXPECT_GT(sched.counters().preemptions, 0u);
    EXPECT_EQ(blocks.num_used(), 0);
    EXPECT_EQ(sched.load(), 0);
  }
}

TEST(Preemption, TakesTheLatestArrivalFirst) {
  BlockAllocator blocks(6, 4, /*prefix_caching=*/false);
  FakePipeline stages(6, 4);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 4, .max_in_flight = 1, .vocab_size = kVocab},
                  &blocks);
  auto a = MakeSequence(1, Tokens(8, 10), 12);
  auto b = MakeSequence(2, Tokens(8, 50), 12);
  sched.Enqueue(a);
  sched.Enqueue(b);
  // Both prompts fill 2 blocks each; decode needs more until the pool runs dry.
  while (sched.counters().preemptions == 0) {
    auto plan = sched.NextPlan();
    ASSERT_TRUE(plan);
    v1::StepsResponse r = stages.Run(*plan);
    if (plan->sequences_size() > 0) {
      ASSERT_TRUE(sched.Complete(r).ok());
    }
  }
  EXPECT_TRUE(b->queued);
  EXPECT_EQ(b->preemptions, 1);
  EXPECT_EQ(a->preemptions, 0);
  EXPECT_TRUE(b->blocks.empty());
  // b's generated tokens are kept and recomputed, not lost.
  EXPECT_GT(b->generated(), 0);
  auto rest = Drain(sched, stages, blocks);
  EXPECT_EQ(b->tokens.size(), 8u + 12u);
  std::vector<int32_t> b_out(b->tokens.begin() + 8, b->tokens.end());
  EXPECT_EQ(b_out, Expected(Tokens(8, 50), 12));
}

TEST(Canary, OnlyWhenIdleBorrowsOneBlockAndReturnsNoEvents) {
  BlockAllocator blocks(4, 4);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 4, .max_in_flight = 1, .vocab_size = kVocab},
                  &blocks);
  auto canary = sched.CanaryPlan();
  ASSERT_TRUE(canary);
  EXPECT_TRUE(canary->canary());
  ASSERT_EQ(canary->sequences_size(), 1);
  EXPECT_EQ(canary->sequences(0).sequence_id(), Scheduler::kCanarySequenceId);
  EXPECT_EQ(blocks.num_free(), 3);
  EXPECT_FALSE(sched.CanaryPlan());  // one in flight already
  sched.Enqueue(MakeSequence(1, Tokens(4, 10), 2));
  EXPECT_FALSE(sched.NextPlan());  // the canary holds the only micro-batch slot
  v1::StepsResponse r;
  r.set_step_id(canary->step_id());
  r.add_tokens()->set_sequence_id(Scheduler::kCanarySequenceId);
  auto events = sched.Complete(r);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(events->empty());
  EXPECT_EQ(blocks.num_free(), 4);
  EXPECT_FALSE(sched.OldestInFlight().has_value());
  auto plan = sched.NextPlan();
  ASSERT_TRUE(plan);
  EXPECT_FALSE(plan->canary());
  EXPECT_FALSE(sched.CanaryPlan());  // not while a real step is in flight
}

// Random allocate / acquire / commit / free against a model of which blocks are held.
TEST(BlockAllocator, RandomizedInvariantsNeverHandOutABlockInUse) {
  std::mt19937 rng(7);
  constexpr int64_t kBlocks = 24, kSize = 2;
  BlockAllocator blocks(kBlocks, kSize);
  struct Held {
    std::vector<int32_t> tokens;  // prefix the blocks hold, whole blocks
    std::vector<int32_t> ids;
  };
  std::vector<Held> held;
  std::vector<int> owner(kBlocks, 0);                  // holders per block, as the model sees it
  std::vector<std::vector<int32_t>> content(kBlocks);  // the prefix a block was computed for
  for (int step = 0; step < 20000; ++step) {
    const int op = rng() % 3;
    if (op == 0 || held.empty()) {
      // A new sequence: a random prompt from a small alphabet so prefixes repeat.
      const int nblocks = 1 + rng() % 4;
      std::vector<int32_t> tokens;
      for (int i = 0; i < nblocks * kSize; ++i) tokens.push_back(rng() % 2);
      uint64_t hash;
      std::vector<int32_t> ids = blocks.AcquirePrefix(tokens, nblocks, &hash);
      auto fresh = blocks.Allocate(nblocks - static_cast<int64_t>(ids.size()));
      if (!fresh.ok()) {
        blocks.Free(ids);
        blocks.CheckInvariants();
        continue;
      }
      for (int32_t b : *fresh) {
        ASSERT_EQ(owner[b], 0) << "block " << b << " handed out while in use";
      }
      for (size_t i = 0; i < ids.size(); ++i) {
        ASSERT_EQ(content[ids[i]],
                  std::vector<int32_t>(tokens.begin(), tokens.begin() + (i + 1) * kSize))
            << "shared block " << ids[i] << " holds another prefix";
      }
      for (size_t i = 0; i < fresh->size(); ++i) {
        content[(*fresh)[i]].assign(tokens.begin(), tokens.begin() + (ids.size() + i + 1) * kSize);
      }
      ids.insert(ids.end(), fresh->begin(), fresh->end());
      for (int32_t b : ids) ++owner[b];
      // Commit every block in chain order, as the scheduler does once they are computed.
      uint64_t parent = BlockAllocator::kRootHash;
      for (size_t i = 0; i < ids.size(); ++i) {
        parent =
            blocks.Commit(ids[i], parent, absl::MakeConstSpan(tokens).subspan(i * kSize, kSize));
      }
      held.push_back({tokens, ids});
    } else if (op == 1) {
      // A finished sequence.
      const size_t i = rng() % held.size();
      for (int32_t b : held[i].ids) --owner[b];
      blocks.Free(held[i].ids);
      held.erase(held.begin() + i);
    } else {
      // A held sequence's prefix must still be found in full.
      const Held& h = held[rng() % held.size()];
      EXPECT_EQ(blocks.CachedPrefixBlocks(h.tokens, h.ids.size()),
                static_cast<int64_t>(h.ids.size()));
    }
    blocks.CheckInvariants();
    int64_t in_use = 0;
    for (int n : owner) in_use += n > 0;
    ASSERT_EQ(blocks.num_used(), in_use);
  }
  EXPECT_GT(blocks.evictions(), 0u);
}

TEST(BlockAllocator, EvictsLeastRecentlyUsedAndDropCacheForgetsEverything) {
  BlockAllocator blocks(4, 1);
  uint64_t h;
  auto a = *blocks.Allocate(2);
  blocks.Commit(a[0], BlockAllocator::kRootHash, {1});
  blocks.Commit(a[1], BlockAllocator::ChainHash(BlockAllocator::kRootHash, {1}), {2});
  blocks.Free(a);
  EXPECT_EQ(blocks.num_free(), 4);
  EXPECT_EQ(blocks.num_evictable(), 2);
  EXPECT_EQ(blocks.CachedPrefixBlocks(std::vector<int32_t>{1, 2, 3}, 3), 2);
  // Two never-cached blocks go first; the third allocation evicts the chain's tail first.
  auto b = *blocks.Allocate(3);
  EXPECT_EQ(blocks.evictions(), 1u);
  EXPECT_EQ(blocks.CachedPrefixBlocks(std::vector<int32_t>{1, 2}, 2), 1);
  EXPECT_EQ(blocks.AcquirePrefix(std::vector<int32_t>{1, 2}, 2, &h).size(), 1u);
  blocks.DropCache();
  EXPECT_EQ(blocks.num_cached(), 0);
  EXPECT_EQ(blocks.CachedPrefixBlocks(std::vector<int32_t>{1}, 1), 0);
  blocks.CheckInvariants();
}

}  // namespace
}  // namespace shardserve
