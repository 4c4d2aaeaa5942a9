#include "router/scheduler.h"

#include "gtest/gtest.h"
#include "router/block_allocator.h"

namespace shardserve {
namespace {

std::shared_ptr<Sequence> MakeSequence(uint64_t id, int prompt, int max_tokens) {
  auto s = std::make_shared<Sequence>();
  s->id = id;
  for (int i = 0; i < prompt; ++i) s->tokens.push_back(10 + i);
  s->prompt_len = prompt;
  s->max_tokens = max_tokens;
  s->stop_ids.insert(2);
  return s;
}

v1::StepsResponse Answer(const v1::StepPlan& plan, int32_t token) {
  v1::StepsResponse r;
  r.set_step_id(plan.step_id());
  for (const auto& s : plan.sequences()) {
    if (!s.sample()) continue;
    v1::SampledToken* t = r.add_tokens();
    t->set_sequence_id(s.sequence_id());
    t->set_token_id(token);
  }
  return r;
}

TEST(Scheduler, ChunksLongPromptsAndSamplesOnlyAtTheEnd) {
  BlockAllocator blocks(64, 4);
  Scheduler sched({.max_batch_tokens = 8, .max_seqs = 4, .max_in_flight = 1, .vocab_size = 100},
                  &blocks);
  sched.Enqueue(MakeSequence(1, 20, 3));
  std::vector<int> chunks;
  while (true) {
    auto plan = sched.NextPlan();
    ASSERT_TRUE(plan.has_value());
    ASSERT_EQ(plan->sequences_size(), 1);
    const auto& s = plan->sequences(0);
    chunks.push_back(s.tokens_size());
    EXPECT_EQ(s.block_table_size(), (s.start_pos() + s.tokens_size() + 3) / 4);
    auto events = sched.Complete(Answer(*plan, 50));
    ASSERT_TRUE(events.ok());
    if (s.sample()) {
      ASSERT_EQ(events->size(), 1u);
      break;
    }
    EXPECT_TRUE(events->empty());
  }
  EXPECT_EQ(chunks, (std::vector<int>{8, 8, 4}));
}

TEST(Scheduler, DisjointMicroBatchesUpToInFlightLimit) {
  BlockAllocator blocks(256, 16);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 2, .vocab_size = 100},
                  &blocks);
  for (uint64_t i = 1; i <= 4; ++i) sched.Enqueue(MakeSequence(i, 4, 10));
  auto a = sched.NextPlan();
  auto b = sched.NextPlan();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(sched.NextPlan().has_value());  // two in flight
  EXPECT_EQ(a->sequences_size(), 2);
  EXPECT_EQ(b->sequences_size(), 2);
  for (const auto& x : a->sequences()) {
    for (const auto& y : b->sequences()) EXPECT_NE(x.sequence_id(), y.sequence_id());
  }
  ASSERT_TRUE(sched.Complete(Answer(*a, 50)).ok());
  auto c = sched.NextPlan();
  ASSERT_TRUE(c.has_value());
  for (const auto& s : c->sequences()) EXPECT_EQ(s.tokens_size(), 1);  // decode steps
}

TEST(Scheduler, FinishesOnStopIdAndLengthAndReleasesBlocks) {
  BlockAllocator blocks(16, 4);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 1, .vocab_size = 100},
                  &blocks);
  sched.Enqueue(MakeSequence(1, 4, 2));
  sched.Enqueue(MakeSequence(2, 4, 10));
  auto plan = sched.NextPlan();
  ASSERT_TRUE(plan);
  EXPECT_EQ(blocks.num_free(), 16 - 1 - 1);  // prompt blocks only; decode takes more later
  auto events = sched.Complete(Answer(*plan, 7));
  ASSERT_TRUE(events.ok());
  plan = sched.NextPlan();
  v1::StepsResponse r;
  r.set_step_id(plan->step_id());
  for (const auto& s : plan->sequences()) {
    auto* t = r.add_tokens();
    t->set_sequence_id(s.sequence_id());
    t->set_token_id(s.sequence_id() == 2 ? 2 : 7);  // 2 is a stop id
  }
  events = sched.Complete(r);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ((*events)[1].finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(blocks.num_free(), 16);
  plan = sched.NextPlan();  // carries the releases
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->sequences_size(), 0);
  EXPECT_EQ(plan->release_sequence_ids_size(), 2);
}

TEST(Scheduler, CancelInFlightEndsAtCompletion) {
  BlockAllocator blocks(16, 4);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 1, .vocab_size = 100},
                  &blocks);
  sched.Enqueue(MakeSequence(1, 4, 8));
  auto plan = sched.NextPlan();
  sched.Cancel(1);
  EXPECT_LT(blocks.num_free(), 16);
  auto events = sched.Complete(Answer(*plan, 5));
  ASSERT_TRUE(events.ok());
  EXPECT_TRUE(events->empty());
  EXPECT_EQ(blocks.num_free(), 16);
  EXPECT_EQ(sched.load(), 0);
}

TEST(Scheduler, WaitsForBlocksAndRejectsMismatchedResults) {
  BlockAllocator blocks(4, 4);
  Scheduler sched({.max_batch_tokens = 64, .max_seqs = 8, .max_in_flight = 1, .vocab_size = 100},
                  &blocks);
  sched.Enqueue(MakeSequence(1, 16, 4));  // its prompt fills all 4 blocks
  sched.Enqueue(MakeSequence(2, 4, 4));   // must wait
  auto plan = sched.NextPlan();
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->sequences_size(), 1);
  EXPECT_EQ(sched.num_waiting(), 1);
  v1::StepsResponse bad = Answer(*plan, 500);  // outside the vocabulary
  EXPECT_FALSE(sched.Complete(bad).ok());
}

TEST(BlockAllocator, AllocatesLowestFirstAndRefusesWhenShort) {
  BlockAllocator blocks(4, 16);
  EXPECT_EQ(blocks.BlocksFor(17), 2);
  auto a = blocks.Allocate(3);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(blocks.Allocate(2).ok());
  EXPECT_EQ(blocks.num_free(), 1);
  blocks.Free(*a);
  EXPECT_EQ(blocks.num_free(), 4);
}

}  // namespace
}  // namespace shardserve
