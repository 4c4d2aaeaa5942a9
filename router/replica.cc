#include "router/replica.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "router/link_choice.h"

namespace shardserve {

void RequestSink::Push(const std::string& text, const v1::SampledToken* token, bool logprobs,
                       v1::FinishReason finish, const v1::Usage* usage) {
  absl::MutexLock lock(&mu_);
  pending_.mutable_text()->append(text);
  if (token != nullptr) {
    pending_.add_token_ids(token->token_id());
    if (logprobs) {
      v1::TokenLogprob* lp = pending_.add_logprobs();
      lp->set_token_id(token->token_id());
      lp->set_logprob(token->logprob());
      for (const v1::TokenProb& t : token->top()) {
        v1::TopLogprob* top = lp->add_top();
        top->set_token_id(t.token_id());
        top->set_logprob(t.logprob());
      }
    }
  }
  if (finish != v1::FINISH_REASON_UNSPECIFIED) {
    pending_.set_finish_reason(finish);
    if (usage != nullptr) *pending_.mutable_usage() = *usage;
    done_ = true;
  }
  has_pending_ = true;
}

void RequestSink::Fail(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  error_ = status;
  done_ = true;
}

void RequestSink::SetWaiting(std::string reason) {
  absl::MutexLock lock(&mu_);
  waiting_ = std::move(reason);
}

std::string RequestSink::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

bool RequestSink::Take(absl::Duration timeout, v1::GenerateResponse* out, bool* done,
                       absl::Status* error, int min_tokens, absl::Duration max_delay) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return has_pending_ || done_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (has_pending_ && !done_ && min_tokens > 1) {
    // Under load: more tokens per message, so fewer wakeups and writes per token. The mutex
    // wakes this thread only once the condition holds, not at every Push.
    auto enough = [this, min_tokens]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return done_ || pending_.token_ids_size() >= min_tokens;
    };
    mu_.AwaitWithTimeout(absl::Condition(&enough), max_delay);
  }
  *done = done_;
  *error = error_;
  if (!has_pending_) return done_;
  out->Swap(&pending_);
  pending_.Clear();
  has_pending_ = false;
  return true;
}

Replica::Replica(int index, std::vector<StageEndpoint> stages, ReplicaOptions options)
    : index_(index),
      stages_(std::move(stages)),
      options_(std::move(options)),
      pipeline_(std::make_unique<Pipeline>(stages_, options_.pipeline)),
      allocator_(options_.pipeline.kv_num_blocks, options_.pipeline.kv_block_size,
                 options_.prefix_caching),
      scheduler_(options_.scheduler, &allocator_) {}

Replica::~Replica() { Stop(); }

void Replica::Start() {
  loop_ = std::thread([this] { Loop(); });
}

void Replica::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (loop_.joinable()) loop_.join();
}

std::vector<StageEndpoint> Replica::stages() const {
  absl::MutexLock lock(&mu_);
  return stages_;
}

std::string Replica::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

std::string Replica::last_failover() const {
  absl::MutexLock lock(&mu_);
  return last_failover_;
}

Replica::ConnectResult Replica::ConnectPipeline(std::string* logged_error,
                                                absl::Duration* retry_wait) {
  RetryParked();
  absl::Status s = pipeline_->Connect([this](const v1::StepsResponse& r) { OnResult(r); },
                                      [this](const absl::Status& e) { OnFailure(e); });
  absl::MutexLock lock(&mu_);
  if (stop_) return ConnectResult::kStopping;
  if (!s.ok() && pipeline_->unusable_stage() >= 0 && options_.registry != nullptr) {
    // A spare takes the place of a stage whose worker is unreachable or leased by another
    // router, and is given its shard.
    if (auto spare = options_.registry->ClaimSpare()) {
      const int i = pipeline_->unusable_stage();
      const bool leased = pipeline_->unusable_is_leased();
      LOG(WARNING) << "pipeline " << index_ << ": stage " << i << " (" << stages_[i].address
                   << ") cannot serve (" << pipeline_->unusable_why() << "); worker " << *spare
                   << " takes its place";
      // Not offered again for a while: a leased worker's router holds it, and an unreachable
      // one (still listed, or still in DNS) would be tried again at once.
      options_.registry->Release(stages_[i].address, leased ? absl::Seconds(30) : absl::Seconds(5));
      pipeline_->ReplaceStage(i, *spare);
      stages_[i].address = *spare;
      return ConnectResult::kNotReady;
    }
  }
  if (!s.ok()) {
    last_error_ = std::string(s.message());
    if (last_error_ != *logged_error) {
      LOG(WARNING) << "pipeline " << index_ << " not ready: " << last_error_
                   << " (retrying with backoff; logged again only when the reason changes)";
      *logged_error = last_error_;
    }
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopping), *retry_wait);
    *retry_wait = std::min(*retry_wait * 2, absl::Seconds(4));
    return ConnectResult::kNotReady;
  }
  failure_ = absl::OkStatus();
  last_answer_ = absl::Now();
  last_error_.clear();
  logged_error->clear();
  *retry_wait = absl::Milliseconds(500);
  ready_ = true;
  LOG(INFO) << "pipeline " << index_ << " is serving";
  // What waited here for a pipeline goes on here.
  std::vector<Handoff> parked = std::move(parked_);
  parked_.clear();
  for (Handoff& h : parked) EnqueueLocked(std::move(h));
  wake_ = true;
  return ConnectResult::kReady;
}

void Replica::FailOverAndUnlock() {
  LOG(WARNING) << "pipeline " << index_ << " failed: " << failure_.message();
  std::vector<Handoff> orphans = TakeAllLocked(failure_);
  last_error_ = std::string(failure_.message());
  last_failover_ = last_error_;
  ready_ = false;
  ++failures_;
  ++failures_by_code_[absl::StatusCodeToString(failure_.code())];
  mu_.Unlock();
  pipeline_->Close();
  if (failover_ && !orphans.empty()) orphans = failover_(this, std::move(orphans));
  if (!orphans.empty()) {
    LOG(WARNING) << "pipeline " << index_ << ": " << orphans.size()
                 << " sequences wait for a pipeline";
  }
  absl::MutexLock lock(&mu_);
  for (Handoff& h : orphans) {
    h.sink->SetWaiting(h.reason);
    parked_.push_back(std::move(h));
  }
}

void Replica::Loop() {
  bool sent = false;  // a plan went out: look for another before waiting
  std::string logged_error;
  // Between failed attempts to set the pipeline up: doubles from 0.5 s to 4 s, back to 0.5 s
  // once it serves.
  absl::Duration retry_wait = absl::Milliseconds(500);
  while (true) {
    if (!ready_) {
      const ConnectResult connected = ConnectPipeline(&logged_error, &retry_wait);
      if (connected == ConnectResult::kStopping) break;
      if (connected == ConnectResult::kNotReady) continue;
    }
    mu_.Lock();
    if (!sent) {
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return wake_ || stop_ || !failure_.ok();
      };
      mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Milliseconds(100));
    }
    wake_ = false;
    if (stop_) {
      mu_.Unlock();
      break;
    }
    if (failure_.ok()) {
      if (auto oldest = scheduler_.OldestInFlight();
          oldest && absl::Now() - *oldest > options_.step_timeout) {
        failure_ = absl::UnavailableError(
            absl::StrCat("pipeline ", index_, ": a step is overdue (no answer within ",
                         absl::FormatDuration(options_.step_timeout), ", --step-timeout-s)"));
      }
    }
    if (!failure_.ok()) {
      FailOverAndUnlock();
      continue;
    }
    sent = SendNextPlanAndUnlock();
  }
  pipeline_->Close();
  absl::MutexLock lock(&mu_);
  FailAllLocked(absl::UnavailableError("router is shutting down"));
}

void Replica::RetryParked() {
  std::vector<Handoff> parked;
  {
    absl::MutexLock lock(&mu_);
    parked = std::move(parked_);
    parked_.clear();
  }
  if (parked.empty()) return;
  if (failover_) parked = failover_(this, std::move(parked));
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (Handoff& h : parked) {
    if (h.sequence->client_gone) continue;
    if (now - h.since > options_.failover_wait) {
      h.sink->Fail(absl::UnavailableError(
          absl::StrCat(h.reason, "; no pipeline took the request within ",
                       absl::FormatDuration(options_.failover_wait), " (--failover-wait-s)")));
      continue;
    }
    parked_.push_back(std::move(h));
  }
}

std::vector<Handoff> Replica::TakeAllLocked(const absl::Status& why) {
  std::vector<Handoff> out;
  const absl::Time now = absl::Now();
  for (const auto& s : scheduler_.AbandonAll()) {
    auto it = clients_.find(s->id);
    if (it == clients_.end()) continue;
    if (++s->pipeline_failures > kMaxPipelineFailures) {
      // A pipeline that fails whatever it runs (or a request that makes every pipeline fail)
      // must not loop until a deadline that may never come.
      it->second.sink->Fail(absl::UnavailableError(
          absl::StrCat(why.message(), "; the request's pipelines failed ", s->pipeline_failures,
                       " times (at most ", kMaxPipelineFailures, " failovers per request)")));
      clients_.erase(it);
      continue;
    }
    out.push_back({s, std::move(it->second.sink), std::move(it->second.text), now,
                   std::string(why.message())});
    clients_.erase(it);
  }
  for (auto& [id, c] : clients_) c.sink->Fail(why);  // not in the scheduler: cannot resume
  clients_.clear();
  load_ = 0;
  return out;
}

void Replica::EnqueueLocked(Handoff h) {
  if (h.sequence->client_gone) return;
  h.sink->SetWaiting("");
  Client c;
  c.sequence = h.sequence;
  c.sink = std::move(h.sink);
  c.text = std::move(h.text);
  clients_.emplace(h.sequence->id, std::move(c));
  scheduler_.Enqueue(std::move(h.sequence));
  load_ = scheduler_.load();
  wake_ = true;
}

absl::Status Replica::Adopt(Handoff& handoff) {
  absl::MutexLock lock(&mu_);
  if (!ready_ || !failure_.ok()) {
    return absl::UnavailableError(absl::StrCat("pipeline ", index_, " is not ready"));
  }
  if (handoff.sequence->client_gone) return absl::OkStatus();
  ++resumed_;
  EnqueueLocked(std::move(handoff));
  return absl::OkStatus();
}

bool Replica::SendNextPlanAndUnlock() {
  std::optional<v1::StepPlan> plan = scheduler_.NextPlan();
  load_ = scheduler_.load();
  // An idle pipeline is probed: a stage that hangs, drains or lost its shard shows up within
  // canary_interval (+ step_timeout when it hangs) instead of at the next request.
  if (!plan.has_value() && options_.canary_interval > absl::ZeroDuration() &&
      absl::Now() - last_answer_ >= options_.canary_interval) {
    plan = scheduler_.CanaryPlan();
    if (plan.has_value()) last_answer_ = absl::Now();
  }
  if (!plan.has_value()) {
    mu_.Unlock();
    return false;
  }
  // Plans leave in the order the scheduler made them: send_mu_ is taken before mu_ is let go.
  send_mu_.Lock();
  mu_.Unlock();
  absl::Status sent = pipeline_->Send(std::move(*plan));
  send_mu_.Unlock();
  if (!sent.ok()) OnFailure(sent);
  return true;
}

void Replica::OnResult(const v1::StepsResponse& result) {
  mu_.Lock();
  last_answer_ = absl::Now();
  DeliverLocked(result);
  if (stop_ || !failure_.ok()) {
    wake_ = true;
    mu_.Unlock();
    return;
  }
  // The next micro-batch goes out from this thread: no hand-off to the loop on the hot path.
  SendNextPlanAndUnlock();
}

void Replica::DeliverLocked(const v1::StepsResponse& result) {
  auto events = scheduler_.Complete(result);
  if (!events.ok()) {
    if (failure_.ok()) failure_ = absl::UnavailableError(events.status().message());
    return;
  }
  for (TokenEvent& ev : *events) {
    auto it = clients_.find(ev.sequence->id);
    if (it == clients_.end()) continue;
    Client& c = it->second;
    if (!ev.error.ok()) {
      c.sink->Fail(ev.error);
      clients_.erase(it);
      continue;
    }
    std::string text = c.text->Add(ev.token.token_id());
    v1::FinishReason finish = ev.finish;
    if (c.text->stopped() && finish == v1::FINISH_REASON_UNSPECIFIED) {
      finish = v1::FINISH_REASON_STOP;
      scheduler_.Finish(ev.sequence->id);
    }
    v1::Usage usage;
    if (finish != v1::FINISH_REASON_UNSPECIFIED) {
      text += c.text->Finish();
      usage.set_prompt_tokens(ev.sequence->prompt_len);
      usage.set_completion_tokens(ev.sequence->generated());
    }
    c.sink->Push(text, &ev.token, ev.sequence->sampling.logprobs(), finish, &usage);
    if (finish != v1::FINISH_REASON_UNSPECIFIED) clients_.erase(it);
  }
  load_ = scheduler_.load();
}

void Replica::OnFailure(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (failure_.ok()) failure_ = status;
  wake_ = true;
}

void Replica::FailAllLocked(const absl::Status& status) {
  scheduler_.AbandonAll();
  for (auto& [id, c] : clients_) c.sink->Fail(status);
  clients_.clear();
  for (Handoff& h : parked_) h.sink->Fail(status);
  parked_.clear();
  load_ = 0;
}

absl::Status Replica::Submit(std::shared_ptr<Sequence> sequence, std::shared_ptr<RequestSink> sink,
                             std::vector<std::string> stop_strings) {
  absl::MutexLock lock(&mu_);
  if (!ready_ || !failure_.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "pipeline ", index_, " is not ready: ", failure_.ok() ? last_error_ : failure_.message()));
  }
  Client c;
  c.sequence = sequence;
  c.sink = std::move(sink);
  c.text = std::make_unique<TextStream>(*options_.tokenizer, std::move(stop_strings),
                                        sequence->follows_text);
  clients_.emplace(sequence->id, std::move(c));
  scheduler_.Enqueue(std::move(sequence));
  load_ = scheduler_.load();
  wake_ = true;
  return absl::OkStatus();
}

void Replica::Cancel(uint64_t sequence_id) {
  absl::MutexLock lock(&mu_);
  scheduler_.Cancel(sequence_id);
  clients_.erase(sequence_id);
  parked_.erase(std::remove_if(parked_.begin(), parked_.end(),
                               [&](const Handoff& h) { return h.sequence->id == sequence_id; }),
                parked_.end());
  load_ = scheduler_.load();
  wake_ = true;
}

ReplicaGauges Replica::Gauges() const {
  std::map<std::string, int> links;
  for (v1::LinkKind kind : pipeline_->links()) ++links[LinkKindName(kind)];
  absl::MutexLock lock(&mu_);
  const SchedulerCounters& c = scheduler_.counters();
  return {.pipeline = index_,
          .waiting = scheduler_.num_waiting(),
          .running = scheduler_.num_running(),
          .kv_blocks_used = allocator_.num_used(),
          .kv_blocks_total = allocator_.num_blocks(),
          .kv_blocks_cached = allocator_.num_cached(),
          .prefix_query_tokens = c.prefix_query_tokens,
          .prefix_hit_tokens = c.prefix_hit_tokens,
          .preemptions = c.preemptions,
          .failovers = failures_.load(),
          .resumed = resumed_.load(),
          .parked = static_cast<int64_t>(parked_.size()),
          .failures_by_code = failures_by_code_,
          .links = std::move(links),
          .ready = ready_.load()};
}

RoutingLoad Replica::Routing(absl::Span<const int32_t> tokens) const {
  absl::MutexLock lock(&mu_);
  RoutingLoad r;
  r.prompt_blocks = static_cast<int64_t>(tokens.size()) / allocator_.block_size();
  r.cached_blocks = allocator_.CachedPrefixBlocks(tokens, r.prompt_blocks);
  r.active_blocks = allocator_.num_used();
  r.waiting_blocks = scheduler_.waiting_blocks();
  return r;
}

absl::StatusOr<std::vector<v1::StatsResponse>> Replica::WorkerStats() const {
  return pipeline_->Stats();
}

}  // namespace shardserve
