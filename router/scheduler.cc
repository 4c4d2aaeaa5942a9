#include "router/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "model/grammar/matcher.h"

namespace shardserve {

void Sequence::ResetForRecompute() {
  num_computed = 0;
  blocks.clear();
  committed_blocks = 0;
  chain_hash = BlockAllocator::kRootHash;
  queued = false;
  on_workers = false;
  in_flight = false;
  finished = false;
}

Scheduler::Scheduler(SchedulerOptions options, BlockAllocator* allocator)
    : options_(options), allocator_(allocator) {}

std::optional<v1::StepPlan> Scheduler::CanaryPlan() {
  if (!batches_.empty()) return std::nullopt;
  auto block = allocator_->Allocate(1);
  if (!block.ok()) return std::nullopt;
  v1::StepPlan plan;
  plan.set_step_id(next_step_++);
  plan.set_canary(true);
  v1::SequencePlan* sp = plan.add_sequences();
  sp->set_sequence_id(kCanarySequenceId);
  sp->add_tokens(0);
  sp->set_start_pos(0);
  sp->add_block_table((*block)[0]);
  sp->set_sample(true);
  v1::StepSampling* sampling = sp->mutable_sampling();
  sampling->set_temperature(0);
  sampling->set_top_p(1);
  sampling->set_repetition_penalty(1);
  for (uint64_t id : pending_releases_) plan.add_release_sequence_ids(id);
  pending_releases_.clear();
  batches_.emplace(plan.step_id(), Batch{{}, absl::Now(), (*block)[0]});
  return plan;
}

std::optional<absl::Time> Scheduler::OldestInFlight() const {
  std::optional<absl::Time> oldest;
  for (const auto& [step, batch] : batches_) {
    if (!oldest || batch.planned < *oldest) oldest = batch.planned;
  }
  return oldest;
}

void Scheduler::Enqueue(std::shared_ptr<Sequence> sequence) {
  sequence->arrival = next_arrival_++;
  sequence->queued = true;
  waiting_.push_back(std::move(sequence));
}

void Scheduler::Admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_seqs) {
    std::shared_ptr<Sequence>& s = waiting_.front();
    if (s->cancelled) {
      s->finished = true;
      s->queued = false;
      waiting_.pop_front();
      continue;
    }
    // The last token is always computed: its logits give the next one.
    const int64_t n = static_cast<int64_t>(s->tokens.size());
    uint64_t hash;
    std::vector<int32_t> blocks =
        allocator_->AcquirePrefix(s->tokens, (n - 1) / allocator_->block_size(), &hash);
    const int64_t hit = static_cast<int64_t>(blocks.size());
    // Leave a block per running sequence for its next decode block, so that admitting does
    // not immediately force a preemption.
    const int64_t fresh_needed = allocator_->BlocksFor(n) - hit;
    auto fresh = allocator_->num_free() - fresh_needed >= static_cast<int64_t>(running_.size())
                     ? allocator_->Allocate(fresh_needed)
                     : absl::ResourceExhaustedError("keeping blocks for running sequences");
    if (!fresh.ok()) {
      allocator_->Free(blocks);
      break;  // first come, first served: wait for blocks to come back
    }
    blocks.insert(blocks.end(), fresh->begin(), fresh->end());
    s->blocks = std::move(blocks);
    s->num_computed = hit * allocator_->block_size();
    s->committed_blocks = hit;
    s->chain_hash = hash;
    if (s->preemptions == 0) s->cached_tokens = s->num_computed;
    counters_.prefix_query_tokens += n;
    counters_.prefix_hit_tokens += s->num_computed;
    s->queued = false;
    // Keep running_ in arrival order (a preempted sequence comes back to its place).
    auto at = std::upper_bound(
        running_.begin(), running_.end(), s->arrival,
        [](uint64_t arrival, const std::shared_ptr<Sequence>& r) { return arrival < r->arrival; });
    running_.insert(at, std::move(s));
    waiting_.pop_front();
  }
}

void Scheduler::Preempt(const std::shared_ptr<Sequence>& s) {
  allocator_->Free(s->blocks);
  s->blocks.clear();
  s->num_computed = 0;
  s->committed_blocks = 0;
  s->chain_hash = BlockAllocator::kRootHash;
  if (s->on_workers) pending_releases_.push_back(s->id);
  s->on_workers = false;
  ++s->preemptions;
  ++counters_.preemptions;
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  // Running sequences all arrived before waiting ones, so arrival order puts it in front.
  auto at = std::upper_bound(
      waiting_.begin(), waiting_.end(), s->arrival,
      [](uint64_t arrival, const std::shared_ptr<Sequence>& w) { return arrival < w->arrival; });
  s->queued = true;
  waiting_.insert(at, s);
}

bool Scheduler::EnsureBlocks(const std::shared_ptr<Sequence>& s, int64_t tokens) {
  const int64_t needed = allocator_->BlocksFor(tokens) - static_cast<int64_t>(s->blocks.size());
  if (needed <= 0) return true;
  while (allocator_->num_free() < needed) {
    std::shared_ptr<Sequence> victim;
    for (auto it = running_.rbegin(); it != running_.rend() && !victim; ++it) {
      if (!(*it)->in_flight && !(*it)->finished) victim = *it;
    }
    if (!victim) return false;  // everyone else is in flight: wait for them
    Preempt(victim);
    if (victim == s) return false;
  }
  auto more = allocator_->Allocate(needed);
  CHECK(more.ok()) << more.status();
  s->blocks.insert(s->blocks.end(), more->begin(), more->end());
  return true;
}

std::optional<v1::StepPlan> Scheduler::NextPlan() {
  v1::StepPlan plan;
  if (in_flight() < options_.max_in_flight) {
    Admit();
    const int64_t per_batch = std::max<int64_t>(
        1, (running_.size() + options_.max_in_flight - 1) / options_.max_in_flight);
    int64_t budget = options_.max_batch_tokens;
    std::vector<Entry> entries;
    // Decode steps first (one token each), then prompt chunks with what budget is left.
    for (int pass = 0; pass < 2; ++pass) {
      const std::vector<std::shared_ptr<Sequence>> candidates = running_;
      for (const auto& s : candidates) {
        if (s->in_flight || s->finished || s->queued) continue;
        if (static_cast<int64_t>(entries.size()) >= per_batch || budget <= 0) break;
        const int64_t remaining = static_cast<int64_t>(s->tokens.size()) - s->num_computed;
        const bool decode = remaining == 1;
        if ((pass == 0) != decode || remaining <= 0) continue;
        const int64_t chunk = std::min(remaining, budget);
        if (!EnsureBlocks(s, s->num_computed + chunk)) continue;
        budget -= chunk;
        s->in_flight = true;  // also keeps it from being preempted by a later entry
        entries.push_back({s, chunk, chunk == remaining});
      }
    }
    if (!entries.empty()) {
      plan.set_step_id(next_step_++);
      for (Entry& e : entries) {
        Sequence& s = *e.sequence;
        v1::SequencePlan* sp = plan.add_sequences();
        sp->set_sequence_id(s.id);
        sp->mutable_tokens()->Add(s.tokens.begin() + s.num_computed,
                                  s.tokens.begin() + s.num_computed + e.chunk);
        sp->set_start_pos(s.num_computed);
        if (!s.on_workers && s.num_computed > 0) {
          // New to the stages but starting after cached blocks: they need the tokens too.
          sp->mutable_prefix_tokens()->Add(s.tokens.begin(), s.tokens.begin() + s.num_computed);
        }
        s.on_workers = true;
        const int64_t nblocks = allocator_->BlocksFor(s.num_computed + e.chunk);
        sp->mutable_block_table()->Add(s.blocks.begin(), s.blocks.begin() + nblocks);
        sp->set_sample(e.sample);
        if (e.sample) {
          *sp->mutable_sampling() = s.sampling;
          if (!s.allowed_tokens.empty()) sp->set_allowed_tokens(s.allowed_tokens);
        }
      }
      batches_.emplace(plan.step_id(), Batch{std::move(entries), absl::Now()});
    }
  }
  for (uint64_t id : pending_releases_) plan.add_release_sequence_ids(id);
  pending_releases_.clear();
  if (plan.sequences_size() == 0 && plan.release_sequence_ids_size() == 0) return std::nullopt;
  return plan;
}

void Scheduler::CommitFullBlocks(Sequence& s) {
  const int64_t bs = allocator_->block_size();
  const int64_t full = std::min<int64_t>(s.num_computed / bs, s.blocks.size());
  for (; s.committed_blocks < full; ++s.committed_blocks) {
    const int64_t i = s.committed_blocks;
    s.chain_hash = allocator_->Commit(s.blocks[i], s.chain_hash,
                                      absl::MakeConstSpan(s.tokens).subspan(i * bs, bs));
  }
}

void Scheduler::FinishSequence(const std::shared_ptr<Sequence>& s) {
  if (s->finished) return;
  s->finished = true;
  allocator_->Free(s->blocks);
  s->blocks.clear();
  if (s->on_workers) pending_releases_.push_back(s->id);
  s->on_workers = false;
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  if (s->queued) {
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
    s->queued = false;
  }
}

absl::StatusOr<std::vector<TokenEvent>> Scheduler::Complete(const v1::StepsResponse& result) {
  auto it = batches_.find(result.step_id());
  if (it == batches_.end()) {
    return absl::InternalError(
        absl::StrCat("result for step ", result.step_id(), ", which is not in flight"));
  }
  std::vector<Entry> entries = std::move(it->second.entries);
  const int32_t canary_block = it->second.canary_block;
  batches_.erase(it);
  if (canary_block >= 0) {
    const int32_t block = canary_block;
    allocator_->Free(absl::MakeConstSpan(&block, 1));
    if (result.tokens_size() != 1 || result.tokens(0).sequence_id() != kCanarySequenceId) {
      return absl::InternalError(absl::StrCat("canary step ", result.step_id(), " returned ",
                                              result.tokens_size(), " tokens"));
    }
    return std::vector<TokenEvent>();
  }
  int next_token = 0;
  int expected = 0;
  for (const Entry& e : entries) expected += e.sample;
  if (result.tokens_size() != expected) {
    for (const Entry& e : entries) e.sequence->in_flight = false;
    return absl::InternalError(absl::StrCat("step ", result.step_id(), " returned ",
                                            result.tokens_size(), " tokens for ", expected,
                                            " sampled sequences"));
  }
  std::vector<TokenEvent> events;
  absl::Status error;
  for (const Entry& e : entries) {
    const std::shared_ptr<Sequence>& s = e.sequence;
    s->in_flight = false;
    s->num_computed += e.chunk;
    CommitFullBlocks(*s);
    if (!e.sample) {
      if (s->cancelled) FinishSequence(s);
      continue;
    }
    const v1::SampledToken& t = result.tokens(next_token++);
    if (t.sequence_id() != s->id || t.token_id() < 0 || t.token_id() >= options_.vocab_size) {
      error = absl::InternalError(
          absl::StrCat("step ", result.step_id(), ": bad sampled token for sequence ", s->id));
      continue;
    }
    if (s->cancelled) {
      FinishSequence(s);
      continue;
    }
    TokenEvent ev{s, t, v1::FINISH_REASON_UNSPECIFIED, absl::OkStatus()};
    if (s->matcher != nullptr) {
      if (absl::Status taken = s->matcher->Accept(t.token_id()); !taken.ok()) {
        ev.error = absl::InternalError(
            absl::StrCat("step ", result.step_id(),
                         " sampled a token the output format does not allow: ", taken.message()));
        FinishSequence(s);
        events.push_back(std::move(ev));
        continue;
      }
    }
    s->tokens.push_back(t.token_id());
    if (s->stop_ids.contains(t.token_id())) {
      ev.finish = v1::FINISH_REASON_STOP;
    } else if (s->matcher != nullptr && s->matcher->Finished()) {
      ev.finish = v1::FINISH_REASON_STOP;  // the output is whole and nothing may follow
    } else if (s->generated() >= s->max_tokens) {
      ev.finish = v1::FINISH_REASON_LENGTH;
    }
    if (ev.finish == v1::FINISH_REASON_UNSPECIFIED && s->matcher != nullptr) {
      // The next token's mask, leaving room to finish in the tokens after it.
      auto mask = s->matcher->Mask(s->max_tokens - s->generated() - 1);
      if (mask.ok()) {
        s->allowed_tokens = *std::move(mask);
      } else {
        ev.error = mask.status();
        FinishSequence(s);
        events.push_back(std::move(ev));
        continue;
      }
    }
    if (ev.finish != v1::FINISH_REASON_UNSPECIFIED) FinishSequence(s);
    events.push_back(std::move(ev));
  }
  if (!error.ok()) return error;
  return events;
}

int64_t Scheduler::waiting_blocks() const {
  int64_t n = 0;
  for (const auto& s : waiting_) n += allocator_->BlocksFor(s->tokens.size());
  return n;
}

void Scheduler::Cancel(uint64_t id) {
  for (auto& s : waiting_) {
    if (s->id == id) s->cancelled = true;
  }
  for (auto s : running_) {
    if (s->id != id) continue;
    s->cancelled = true;
    if (!s->in_flight) FinishSequence(s);
    return;
  }
}

void Scheduler::Finish(uint64_t id) {
  // A copy: FinishSequence removes the sequence from the list it was found in.
  std::shared_ptr<Sequence> found;
  auto has_id = [id](const std::shared_ptr<Sequence>& s) { return s->id == id; };
  if (auto it = std::find_if(running_.begin(), running_.end(), has_id); it != running_.end()) {
    found = *it;
  } else if (auto w = std::find_if(waiting_.begin(), waiting_.end(), has_id); w != waiting_.end()) {
    found = *w;
  }
  if (found) FinishSequence(found);
}

std::vector<std::shared_ptr<Sequence>> Scheduler::AbandonAll() {
  std::vector<std::shared_ptr<Sequence>> out;
  for (auto& s : running_) {
    allocator_->Free(s->blocks);
    s->ResetForRecompute();
    if (!s->cancelled) out.push_back(s);
  }
  for (auto& s : waiting_) {
    s->ResetForRecompute();
    if (!s->cancelled) out.push_back(s);
  }
  // The stages may have restarted: what they held is gone.
  allocator_->DropCache();
  running_.clear();
  waiting_.clear();
  batches_.clear();
  pending_releases_.clear();
  return out;
}

}  // namespace shardserve
