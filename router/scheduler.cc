#include "router/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace shardserve {

Scheduler::Scheduler(SchedulerOptions options, BlockAllocator* allocator)
    : options_(options), allocator_(allocator) {}

void Scheduler::Enqueue(std::shared_ptr<Sequence> sequence) {
  waiting_.push_back(std::move(sequence));
}

void Scheduler::Admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_seqs) {
    std::shared_ptr<Sequence>& s = waiting_.front();
    if (s->cancelled) {
      s->finished = true;
      waiting_.pop_front();
      continue;
    }
    auto blocks = allocator_->Allocate(allocator_->BlocksFor(s->prompt_len + s->max_tokens));
    if (!blocks.ok()) break;  // first come, first served: wait for blocks to come back
    s->blocks = std::move(*blocks);
    running_.push_back(std::move(s));
    waiting_.pop_front();
  }
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
      for (const auto& s : running_) {
        if (s->in_flight || s->finished) continue;
        if (static_cast<int64_t>(entries.size()) >= per_batch || budget <= 0) break;
        const int64_t remaining = static_cast<int64_t>(s->tokens.size()) - s->num_computed;
        const bool decode = remaining == 1;
        if ((pass == 0) != decode || remaining <= 0) continue;
        const int64_t chunk = std::min(remaining, budget);
        budget -= chunk;
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
        const int64_t nblocks = allocator_->BlocksFor(s.num_computed + e.chunk);
        sp->mutable_block_table()->Add(s.blocks.begin(), s.blocks.begin() + nblocks);
        sp->set_sample(e.sample);
        if (e.sample) *sp->mutable_sampling() = s.sampling;
        s.in_flight = true;
      }
      batches_.emplace(plan.step_id(), std::move(entries));
    }
  }
  for (uint64_t id : pending_releases_) plan.add_release_sequence_ids(id);
  pending_releases_.clear();
  if (plan.sequences_size() == 0 && plan.release_sequence_ids_size() == 0) return std::nullopt;
  return plan;
}

void Scheduler::FinishSequence(const std::shared_ptr<Sequence>& s) {
  if (s->finished) return;
  s->finished = true;
  allocator_->Free(s->blocks);
  s->blocks.clear();
  if (s->num_computed > 0 || s->in_flight) pending_releases_.push_back(s->id);
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
}

absl::StatusOr<std::vector<TokenEvent>> Scheduler::Complete(const v1::StepsResponse& result) {
  auto it = batches_.find(result.step_id());
  if (it == batches_.end()) {
    return absl::InternalError(
        absl::StrCat("result for step ", result.step_id(), ", which is not in flight"));
  }
  std::vector<Entry> entries = std::move(it->second);
  batches_.erase(it);
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
    TokenEvent ev{s, t, v1::FINISH_REASON_UNSPECIFIED};
    s->tokens.push_back(t.token_id());
    if (s->stop_ids.contains(t.token_id())) {
      ev.finish = v1::FINISH_REASON_STOP;
    } else if (s->generated() >= s->max_tokens) {
      ev.finish = v1::FINISH_REASON_LENGTH;
    }
    if (ev.finish != v1::FINISH_REASON_UNSPECIFIED) FinishSequence(s);
    events.push_back(std::move(ev));
  }
  if (!error.ok()) return error;
  return events;
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
  for (auto s : running_) {
    if (s->id == id) {
      FinishSequence(s);
      return;
    }
  }
}

std::vector<std::shared_ptr<Sequence>> Scheduler::AbandonAll() {
  std::vector<std::shared_ptr<Sequence>> out;
  for (auto& s : running_) {
    allocator_->Free(s->blocks);
    s->blocks.clear();
    s->in_flight = false;
    s->finished = true;
    out.push_back(s);
  }
  for (auto& s : waiting_) {
    s->finished = true;
    out.push_back(s);
  }
  running_.clear();
  waiting_.clear();
  batches_.clear();
  pending_releases_.clear();
  return out;
}

}  // namespace shardserve
