// StageRuntime over local and fault-injecting links, in one process.
#include "worker/stage_runtime.h"

#include <filesystem>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "worker/activation_link.h"

namespace shardserve {
namespace {

const std::string kModel = "../shared/models/stories260K";

std::unique_ptr<StageRuntime> Load(Backend* backend, int begin, int end) {
  auto stage = LoadStage(kModel, {begin, end}, {16, 64}, backend);
  EXPECT_TRUE(stage.ok()) << stage.status();
  return std::make_unique<StageRuntime>(std::move(*stage), 256);
}

v1::StepPlan Plan(uint64_t step, std::vector<int32_t> tokens, int start, bool sample) {
  v1::StepPlan p;
  p.set_step_id(step);
  auto* s = p.add_sequences();
  s->set_sequence_id(7);
  for (int32_t t : tokens) s->add_tokens(t);
  s->set_start_pos(start);
  for (int b = 0; b <= (start + static_cast<int>(tokens.size()) - 1) / 16; ++b)
    s->add_block_table(b);
  s->set_sample(sample);
  s->mutable_sampling()->set_top_p(1);
  s->mutable_sampling()->set_repetition_penalty(1);
  return p;
}

class StageRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The shared test data is required (README: tests read ../shared; without it they fail).
    const std::filesystem::path config = std::filesystem::path(kModel) / "config.json";
    ASSERT_TRUE(std::filesystem::exists(config))
        << "missing test model: " << std::filesystem::absolute(config).lexically_normal().string()
        << " (tests read ../shared beside the repository and run from its root)";
    backend_ = NewCpuBackend({1});
  }
  std::unique_ptr<Backend> backend_;
};

TEST_F(StageRuntimeTest, TwoStagesOverALocalLinkMatchOneStage) {
  auto whole = Load(backend_.get(), 0, 5);
  auto first = Load(backend_.get(), 0, 2);
  auto last = Load(backend_.get(), 2, 5);
  auto link = NewLocalLink("stage 0", absl::Seconds(5));
  first->SetLinks(nullptr, link.get());
  last->SetLinks(link.get(), nullptr);
  std::vector<int32_t> prompt = {1, 403, 407, 261, 378};
  auto a = whole->Execute(Plan(1, prompt, 0, true));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(first->Execute(Plan(1, prompt, 0, true)).ok());
  auto b = last->Execute(Plan(1, prompt, 0, true));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->tokens_size(), 1);
  ASSERT_EQ(b->tokens_size(), 1);
  EXPECT_EQ(a->tokens(0).token_id(), b->tokens(0).token_id());
  EXPECT_EQ(link->counters().messages, 1u);
  EXPECT_EQ(first->Stats().kv_blocks_used, 1);
  first->Release(std::vector<uint64_t>{7});
  EXPECT_EQ(first->Stats().kv_blocks_used, 0);
  EXPECT_EQ(first->Stats().live_sequences, 0);
}

// Sampling where the logits are (the path a GPU stage takes with SampleOnDevice; here the CPU
// backend's in-place sampler) picks exactly the host path's tokens and logprobs, seeded and
// penalised over 40 steps; steps that need the logits on the host (a mask, top logprobs) still
// go there.
TEST_F(StageRuntimeTest, SamplingInPlaceMatchesTheHostPath) {
  auto host = Load(backend_.get(), 0, 5);
  auto in_place = Load(backend_.get(), 0, 5);
  int sampler_rows = 0;
  LogitsSampler sampler = NewHostMemorySampler();
  in_place->SetSampler([&](const Tensor& logits, absl::Span<const SamplingParams> params,
                           absl::Span<const int64_t> positions,
                           absl::Span<const absl::Span<const int32_t>> histories) {
    sampler_rows += static_cast<int>(logits.rows);
    return sampler(logits, params, positions, histories);
  });
  auto sampled = [](v1::StepPlan p) {
    v1::StepsResponse r;
    v1::StepSampling* s = p.mutable_sequences(0)->mutable_sampling();
    s->set_temperature(0.9f);
    s->set_top_k(40);
    s->set_seed(1234);
    s->set_repetition_penalty(1.3f);
    s->set_frequency_penalty(0.2f);
    return p;
  };
  std::vector<int32_t> prompt = {1, 403, 407, 261, 378};
  auto a = host->Execute(sampled(Plan(1, prompt, 0, true)));
  auto b = in_place->Execute(sampled(Plan(1, prompt, 0, true)));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  int pos = static_cast<int>(prompt.size());
  for (int step = 2; step < 42; ++step) {
    ASSERT_EQ(a->tokens_size(), 1);
    ASSERT_EQ(b->tokens_size(), 1);
    ASSERT_EQ(a->tokens(0).token_id(), b->tokens(0).token_id()) << "step " << step;
    EXPECT_FLOAT_EQ(a->tokens(0).logprob(), b->tokens(0).logprob()) << "step " << step;
    const int32_t next = a->tokens(0).token_id();
    a = host->Execute(sampled(Plan(step, {next}, pos, true)));
    b = in_place->Execute(sampled(Plan(step, {next}, pos, true)));
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ++pos;
  }
  EXPECT_EQ(sampler_rows, 41);
  EXPECT_EQ(in_place->steps_sampled_in_place(), 41u);
  EXPECT_EQ(host->steps_sampled_in_place(), 0u);
  // Top logprobs need every logit: the host samples, and answers them.
  v1::StepPlan top = Plan(50, {a->tokens(0).token_id()}, pos, true);
  top.mutable_sequences(0)->mutable_sampling()->set_top_logprobs(3);
  auto c = in_place->Execute(top);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->tokens_size(), 1);
  EXPECT_EQ(c->tokens(0).top_size(), 3);
  EXPECT_EQ(in_place->steps_sampled_in_place(), 41u);
  EXPECT_EQ(sampler_rows, 41);
}

TEST_F(StageRuntimeTest, RejectsBadPlans) {
  auto whole = Load(backend_.get(), 0, 5);
  v1::StepPlan p = Plan(1, {1, 2}, 0, true);
  p.mutable_sequences(0)->set_block_table(0, 64);
  auto r = whole->Execute(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("block_table"), std::string::npos);
  p = Plan(1, {1, 9999}, 0, true);
  EXPECT_NE(whole->Execute(p).status().message().find("tokens"), std::string::npos);
  p = Plan(1, {1}, 3, true);  // a new sequence past 0 must name its prefix
  EXPECT_NE(whole->Execute(p).status().message().find("prefix_tokens"), std::string::npos);
  ASSERT_TRUE(whole->Execute(Plan(1, {1, 2}, 0, false)).ok());
  p = Plan(2, {1}, 3, true);  // skips positions
  EXPECT_NE(whole->Execute(p).status().message().find("start_pos"), std::string::npos);
  p = Plan(2, {1}, 2, true);
  p.mutable_sequences(0)->add_prefix_tokens(1);  // not a new sequence
  EXPECT_NE(whole->Execute(p).status().message().find("prefix_tokens"), std::string::npos);
  whole->Release(std::vector<uint64_t>{7});
  p = Plan(3, {1}, 2, true);
  p.mutable_sequences(0)->add_prefix_tokens(1);
  p.mutable_sequences(0)->add_prefix_tokens(5000);  // outside the vocabulary
  EXPECT_NE(whole->Execute(p).status().message().find("prefix_tokens"), std::string::npos);
  p = Plan(1, {1}, 0, true);
  p.mutable_sequences(0)->mutable_sampling()->set_top_p(0);
  EXPECT_FALSE(whole->Execute(p).ok());
}

// A constrained sequence samples only what allowed_tokens allows, greedy or not; a mask of the
// wrong size or one that allows nothing is refused naming the field.
TEST_F(StageRuntimeTest, AllowedTokensMaskTheSample) {
  auto whole = Load(backend_.get(), 0, 5);
  std::string mask(512 / 8, '\0');
  for (int32_t t : {300, 301, 450}) mask[t >> 3] = static_cast<char>(mask[t >> 3] | (1 << (t & 7)));
  for (float temperature : {0.0f, 1.0f}) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      v1::StepPlan p = Plan(1, {1, 403, 407}, 0, true);
      p.mutable_sequences(0)->set_allowed_tokens(mask);
      p.mutable_sequences(0)->mutable_sampling()->set_temperature(temperature);
      p.mutable_sequences(0)->mutable_sampling()->set_seed(seed);
      auto r = whole->Execute(p);
      ASSERT_TRUE(r.ok()) << r.status();
      const int32_t t = r->tokens(0).token_id();
      EXPECT_TRUE(t == 300 || t == 301 || t == 450) << t;
      whole->Release(std::vector<uint64_t>{7});
    }
  }
  v1::StepPlan p = Plan(1, {1}, 0, true);
  p.mutable_sequences(0)->set_allowed_tokens(std::string(10, '\xff'));
  auto short_mask = whole->Execute(p);
  EXPECT_EQ(short_mask.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_mask.status().message().find("allowed_tokens"), std::string::npos);
  p.mutable_sequences(0)->set_allowed_tokens(std::string(64, '\0'));
  auto none = whole->Execute(p);
  EXPECT_NE(none.status().message().find("allows no token"), std::string::npos) << none.status();
}

// A sequence that starts after blocks another sequence computed (the router's prefix cache)
// samples what a sequence computing everything itself samples, repetition penalties included.
TEST_F(StageRuntimeTest, NewSequenceReusesAnotherSequencesBlocks) {
  auto whole = Load(backend_.get(), 0, 5);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 36; ++i) prompt.push_back(300 + (i * 7) % 100);
  auto plan = [&](uint64_t step, uint64_t id, int begin, int end, std::vector<int32_t> blocks) {
    v1::StepPlan p;
    p.set_step_id(step);
    auto* s = p.add_sequences();
    s->set_sequence_id(id);
    s->mutable_tokens()->Add(prompt.begin() + begin, prompt.begin() + end);
    s->set_start_pos(begin);
    if (begin > 0) s->mutable_prefix_tokens()->Add(prompt.begin(), prompt.begin() + begin);
    for (int32_t b : blocks) s->add_block_table(b);
    s->set_sample(true);
    s->mutable_sampling()->set_top_p(1);
    s->mutable_sampling()->set_repetition_penalty(1.3);
    s->mutable_sampling()->set_top_logprobs(3);
    return p;
  };
  // Sequence 1 computes 32 positions into blocks 0 and 1.
  ASSERT_TRUE(whole->Execute(plan(1, 1, 0, 32, {0, 1})).ok());
  // Sequence 2 reads them and computes only positions 32..35, in block 2.
  auto shared = whole->Execute(plan(2, 2, 32, 36, {0, 1, 2}));
  ASSERT_TRUE(shared.ok()) << shared.status();
  // Sequence 3 computes all 36 itself, in blocks 3..5.
  auto alone = whole->Execute(plan(3, 3, 0, 36, {3, 4, 5}));
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_EQ(shared->tokens_size(), 1);
  ASSERT_EQ(alone->tokens_size(), 1);
  EXPECT_EQ(shared->tokens(0).token_id(), alone->tokens(0).token_id());
  EXPECT_NEAR(shared->tokens(0).logprob(), alone->tokens(0).logprob(), 1e-4);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(shared->tokens(0).top(i).token_id(), alone->tokens(0).top(i).token_id());
  }
  const StageStats stats = whole->Stats();
  EXPECT_EQ(stats.prefix_cached_tokens, 32u);
  EXPECT_EQ(stats.tokens, 32u + 4u + 36u);
  EXPECT_EQ(stats.kv_blocks_used, 6);  // blocks 0 and 1 counted once
}

TEST_F(StageRuntimeTest, CanaryAnswersAndLeavesNoTrace) {
  auto whole = Load(backend_.get(), 0, 5);
  v1::StepPlan p = Plan(1, {1}, 0, true);
  p.set_canary(true);
  auto r = whole->Execute(p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens_size(), 1);
  const StageStats s = whole->Stats();
  EXPECT_EQ(s.steps, 0u);
  EXPECT_EQ(s.tokens, 0u);
  EXPECT_EQ(s.live_sequences, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
  // The same id runs again from position 0: nothing was recorded for it.
  EXPECT_TRUE(whole->Execute(p).ok());
}

TEST_F(StageRuntimeTest, FaultyLinkFailuresReachTheCaller) {
  auto first = Load(backend_.get(), 0, 2);
  auto last = Load(backend_.get(), 2, 5);
  auto link = NewLocalLink("stage 0", absl::Milliseconds(200));
  auto faulty = NewFaultyLink(link.get(), {.fail_after_sends = 1});
  first->SetLinks(nullptr, faulty.get());
  last->SetLinks(link.get(), nullptr);
  ASSERT_TRUE(first->Execute(Plan(1, {1, 5}, 0, true)).ok());
  ASSERT_TRUE(last->Execute(Plan(1, {1, 5}, 0, true)).ok());
  EXPECT_EQ(first->Execute(Plan(2, {6}, 2, true)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(last->Execute(Plan(2, {6}, 2, true)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(StageRuntimeTest, AsyncSendsMatchAndReportFailures) {
  auto stage = LoadStage(kModel, {0, 2}, {16, 64}, backend_.get());
  ASSERT_TRUE(stage.ok()) << stage.status();
  StageRuntime first(std::move(*stage), 256, /*async_sends=*/true);
  auto last = Load(backend_.get(), 2, 5);
  auto whole = Load(backend_.get(), 0, 5);
  auto link = NewLocalLink("stage 0", absl::Milliseconds(500));
  auto faulty = NewFaultyLink(link.get(), {.fail_after_sends = 2});
  absl::Mutex mu;
  std::vector<std::pair<uint64_t, absl::StatusCode>> reported;
  first.SetSendErrorHandler([&](uint64_t step, const absl::Status& s) {
    absl::MutexLock lock(&mu);
    reported.push_back({step, s.code()});
  });
  first.SetLinks(nullptr, faulty.get());
  last->SetLinks(link.get(), nullptr);
  // Two steps go through (the second overlapping the first's send) and sample as one stage does.
  ASSERT_TRUE(first.Execute(Plan(1, {1, 5}, 0, true)).ok());
  ASSERT_TRUE(first.Execute(Plan(2, {6}, 2, true)).ok());
  auto a = last->Execute(Plan(1, {1, 5}, 0, true));
  auto b = last->Execute(Plan(2, {6}, 2, true));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(whole->Execute(Plan(1, {1, 5}, 0, true)).ok());
  auto ref = whole->Execute(Plan(2, {6}, 2, true));
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(b->tokens(0).token_id(), ref->tokens(0).token_id());
  // The third send fails: the handler hears of it without another step, and later steps fail.
  ASSERT_TRUE(first.Execute(Plan(3, {7}, 3, true)).ok());
  {
    absl::MutexLock lock(&mu);
    auto heard = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !reported.empty(); };
    mu.AwaitWithTimeout(absl::Condition(&heard), absl::Seconds(5));
  }
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(reported.size(), 1u);
    EXPECT_EQ(reported[0].first, 3u);
    EXPECT_EQ(reported[0].second, absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(first.Execute(Plan(4, {8}, 4, true)).status().code(), absl::StatusCode::kUnavailable);
  first.SetSendErrorHandler(nullptr);
}

TEST_F(StageRuntimeTest, CorruptShapeIsRejected) {
  auto first = Load(backend_.get(), 0, 2);
  auto last = Load(backend_.get(), 2, 5);
  auto link = NewLocalLink("stage 0", absl::Seconds(5));
  auto faulty = NewFaultyLink(link.get(), {.corrupt_shape = true});
  first->SetLinks(nullptr, faulty.get());
  last->SetLinks(link.get(), nullptr);
  ASSERT_TRUE(first->Execute(Plan(1, {1, 5, 6}, 0, true)).ok());
  auto r = last->Execute(Plan(1, {1, 5, 6}, 0, true));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
}

}  // namespace
}  // namespace shardserve
