#include "worker/stage_runtime.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/sampler.h"

namespace shardserve {
namespace {

SamplingParams ToParams(const v1::StepSampling& s) {
  SamplingParams p;
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  p.top_p = s.top_p();
  p.min_p = s.min_p();
  p.repetition_penalty = s.repetition_penalty();
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  p.seed = s.seed();
  return p;
}

absl::Status Invalid(int index, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("sequences[", index, "].", field, ": ", what));
}

}  // namespace

StageRuntime::StageRuntime(std::unique_ptr<ModelStage> stage, int64_t max_step_tokens,
                           bool async_sends)
    : stage_(std::move(stage)), max_step_tokens_(max_step_tokens) {
  {
    absl::MutexLock lock(&mu_);
    block_refs_.assign(stage_->kv_spec().num_blocks, 0);
  }
  if (async_sends && !is_last()) sender_ = std::thread([this] { SenderLoop(); });
}

StageRuntime::~StageRuntime() {
  {
    absl::MutexLock lock(&send_mu_);
    stop_sender_ = true;
  }
  if (sender_.joinable()) sender_.join();
}

void StageRuntime::WaitSendIdleLocked() {
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_) {
    return !pending_send_.has_value() && !sending_;
  };
  send_mu_.Await(absl::Condition(&idle));
}

void StageRuntime::SetLinks(ActivationLink* upstream, ActivationLink* downstream) {
  absl::MutexLock send_lock(&send_mu_);
  WaitSendIdleLocked();  // the old link may be about to go away
  send_error_ = absl::OkStatus();
  absl::MutexLock lock(&mu_);
  upstream_ = upstream;
  downstream_ = downstream;
}

void StageRuntime::SetSendErrorHandler(SendErrorFn handler) {
  absl::MutexLock lock(&send_mu_);
  on_send_error_ = std::move(handler);
}

absl::Status StageRuntime::SendAsync(uint64_t step, ActivationTensor tensor, ActivationLink* link) {
  absl::MutexLock lock(&send_mu_);
  WaitSendIdleLocked();
  if (!send_error_.ok()) return send_error_;
  pending_send_ = PendingSend{step, std::move(tensor), link};
  return absl::OkStatus();
}

void StageRuntime::SenderLoop() {
  while (true) {
    PendingSend send;
    {
      absl::MutexLock lock(&send_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_) {
        return pending_send_.has_value() || stop_sender_;
      };
      send_mu_.Await(absl::Condition(&ready));
      if (!pending_send_.has_value()) return;
      send = std::move(*pending_send_);
      pending_send_.reset();
      sending_ = true;
    }
    absl::Status status = send.link->Send(send.step, std::move(send.tensor));
    absl::MutexLock lock(&send_mu_);
    sending_ = false;
    if (!status.ok()) {
      if (send_error_.ok()) send_error_ = status;
      if (on_send_error_) on_send_error_(send.step, status);
    }
  }
}

absl::Status StageRuntime::Validate(const v1::StepPlan& plan) const {
  const ModelConfig& config = stage_->config();
  const KvCacheSpec& kv = stage_->kv_spec();
  int64_t total = 0;
  std::unordered_set<uint64_t> seen;
  for (int i = 0; i < plan.sequences_size(); ++i) {
    const v1::SequencePlan& s = plan.sequences(i);
    if (!seen.insert(s.sequence_id()).second) {
      return Invalid(i, "sequence_id", absl::StrCat(s.sequence_id(), " appears twice"));
    }
    total += s.tokens_size();
    if (total > max_step_tokens_) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan has more than max_step_tokens=", max_step_tokens_, " tokens"));
    }
    RETURN_IF_ERROR(ValidateSequenceStep(i, s.start_pos(), s.tokens(), s.block_table(), config, kv,
                                         /*check_tokens=*/true));
    const int64_t end = s.start_pos() + s.tokens_size();
    auto it = sequences_.find(s.sequence_id());
    const bool is_new = it == sequences_.end();
    const int64_t known = is_new ? 0 : it->second.length;
    // A new sequence may start after a cached prefix, whose tokens it then names.
    if (is_new && s.start_pos() > 0) {
      if (s.prefix_tokens_size() != s.start_pos()) {
        return Invalid(i, "prefix_tokens",
                       absl::StrCat(s.prefix_tokens_size(),
                                    " tokens for a new sequence at start_pos ", s.start_pos()));
      }
      for (int32_t t : s.prefix_tokens()) {
        if (t < 0 || t >= config.vocab_size) {
          return Invalid(i, "prefix_tokens",
                         absl::StrCat("id ", t, " outside [0, ", config.vocab_size, ")"));
        }
      }
    } else if (s.start_pos() != known) {
      return Invalid(i, "start_pos",
                     absl::StrCat(s.start_pos(), " but the sequence has ", known, " tokens"));
    } else if (s.prefix_tokens_size() != 0) {
      return Invalid(i, "prefix_tokens", "only a new sequence starting past 0 may name them");
    }
    // A table is never longer than a whole context needs (bounds the work per step).
    if (s.block_table_size() >
        (config.max_position_embeddings + kv.block_size - 1) / kv.block_size) {
      return Invalid(i, "block_table",
                     absl::StrCat(s.block_table_size(), " blocks for ", end, " positions"));
    }
    if (s.sample()) {
      if (!is_last()) continue;
      RETURN_IF_ERROR(Annotate(ValidateSamplingParams(ToParams(s.sampling())),
                               absl::StrCat("sequences[", i, "].sampling")));
      if (s.sampling().top_logprobs() < 0 || s.sampling().top_logprobs() > kMaxTopLogprobs) {
        return Invalid(i, "sampling.top_logprobs",
                       absl::StrCat("outside [0, ", kMaxTopLogprobs, "]"));
      }
      if (!s.allowed_tokens().empty()) {
        const size_t want = (static_cast<size_t>(config.vocab_size) + 7) / 8;
        if (s.allowed_tokens().size() != want) {
          return Invalid(i, "allowed_tokens",
                         absl::StrCat(s.allowed_tokens().size(), " bytes for a vocabulary of ",
                                      config.vocab_size, " (", want, " expected)"));
        }
        // Byte by byte (a bit loop is 128k steps per sequence and step on a large vocabulary);
        // the last byte's bits past the vocabulary do not count.
        const std::string& mask = s.allowed_tokens();
        const unsigned char in_vocab =
            config.vocab_size % 8 == 0 ? 0xFF : (1u << (config.vocab_size % 8)) - 1;
        const bool any = std::any_of(mask.begin(), mask.end() - 1, [](char b) { return b != 0; }) ||
                         (static_cast<unsigned char>(mask.back()) & in_vocab) != 0;
        if (!any) return Invalid(i, "allowed_tokens", "allows no token of the vocabulary");
        // Bits past the vocabulary, in the last byte, stay clear.
        if (config.vocab_size % 8 != 0 && (static_cast<unsigned char>(s.allowed_tokens().back()) >>
                                           (config.vocab_size % 8)) != 0) {
          return Invalid(i, "allowed_tokens", "sets bits past the vocabulary");
        }
      }
    }
  }
  return absl::OkStatus();
}

void StageRuntime::ReleaseLocked(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  for (int32_t b : it->second.blocks) {
    if (--block_refs_[b] == 0) --blocks_used_;
  }
  sequences_.erase(it);
}

void StageRuntime::Release(absl::Span<const uint64_t> ids) {
  absl::MutexLock lock(&mu_);
  for (uint64_t id : ids) ReleaseLocked(id);
}

int64_t StageRuntime::ReleaseAll() {
  absl::MutexLock exec_lock(&exec_mu_);
  absl::MutexLock lock(&mu_);
  const int64_t n = static_cast<int64_t>(sequences_.size());
  sequences_.clear();
  std::fill(block_refs_.begin(), block_refs_.end(), 0);
  blocks_used_ = 0;
  return n;
}

absl::StatusOr<v1::StepsResponse> StageRuntime::Execute(const v1::StepPlan& plan) {
  absl::MutexLock exec_lock(&exec_mu_);
  std::vector<SequenceStep> batch;
  ActivationLink* upstream;
  ActivationLink* downstream;
  int64_t total_tokens = 0;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t id : plan.release_sequence_ids()) ReleaseLocked(id);
    RETURN_IF_ERROR(Validate(plan));
    upstream = upstream_;
    downstream = downstream_;
    batch = ToBatch(plan, &total_tokens);
  }
  if (batch.empty()) return v1::StepsResponse();
  ActivationTensor input;
  if (!is_first()) {
    ASSIGN_OR_RETURN(input, ReceiveInput(plan.step_id(), upstream, total_tokens));
  }
  const auto forward_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(StepOutput out, stage_->Forward(batch, input.data));
  // Busy: the stage's compute and, on the last stage, the sampling; not the wait for input.
  const double modelled_busy = out.busy_seconds;
  auto busy = [&] {
    return modelled_busy >= 0
               ? modelled_busy
               : std::chrono::duration<double>(std::chrono::steady_clock::now() - forward_start)
                     .count();
  };

  v1::StepsResponse response;
  response.set_step_id(plan.step_id());
  absl::MutexLock lock(&mu_);
  // Record tokens and blocks before sampling: the penalties see this step's tokens.
  RecordLocked(plan, total_tokens);
  if (!is_last()) {
    busy_seconds_ += busy();
    if (downstream == nullptr) return absl::FailedPreconditionError("no link to the next stage");
    ActivationTensor t{out.rows, out.cols, std::move(out.data)};
    mu_.Unlock();
    absl::Status sent = sender_.joinable() ? SendAsync(plan.step_id(), std::move(t), downstream)
                                           : downstream->Send(plan.step_id(), std::move(t));
    mu_.Lock();
    RETURN_IF_ERROR(sent);
    return response;
  }
  RETURN_IF_ERROR(SampleLocked(plan, out, &response));
  busy_seconds_ += busy();
  return response;
}

std::vector<SequenceStep> StageRuntime::ToBatch(const v1::StepPlan& plan, int64_t* total_tokens) {
  std::vector<SequenceStep> batch;
  batch.reserve(plan.sequences_size());
  // The sampler takes the whole step, or the host does: masks and top logprobs need the logits.
  const bool in_place =
      sampler_ != nullptr && is_last() &&
      std::none_of(plan.sequences().begin(), plan.sequences().end(), [](const v1::SequencePlan& s) {
        return s.sample() && (!s.allowed_tokens().empty() || s.sampling().top_logprobs() > 0);
      });
  for (const v1::SequencePlan& s : plan.sequences()) {
    SequenceStep step;
    step.tokens.assign(s.tokens().begin(), s.tokens().end());
    step.start_pos = s.start_pos();
    step.block_table.assign(s.block_table().begin(), s.block_table().end());
    step.compute_logits = s.sample() && is_last();
    step.keep_logits = step.compute_logits && in_place;
    *total_tokens += s.tokens_size();
    batch.push_back(std::move(step));
  }
  return batch;
}

absl::StatusOr<ActivationTensor> StageRuntime::ReceiveInput(uint64_t step, ActivationLink* upstream,
                                                            int64_t total_tokens) {
  if (upstream == nullptr) return absl::FailedPreconditionError("no link from the previous stage");
  ASSIGN_OR_RETURN(ActivationTensor input, upstream->Recv(step));
  const int64_t hidden = stage_->activation_width();
  if (input.rows != total_tokens || input.cols != hidden ||
      static_cast<int64_t>(input.data.size()) != total_tokens * hidden) {
    return absl::InvalidArgumentError(absl::StrCat("activations for step ", step, " are [",
                                                   input.rows, ", ", input.cols, "], expected [",
                                                   total_tokens, ", ", hidden, "]"));
  }
  return input;
}

void StageRuntime::RecordLocked(const v1::StepPlan& plan, int64_t total_tokens) {
  if (plan.canary()) return;  // a probe leaves no trace
  for (const v1::SequencePlan& s : plan.sequences()) {
    SequenceState& state = sequences_[s.sequence_id()];
    if (state.length == 0 && s.start_pos() > 0) {
      state.length = s.start_pos();
      prefix_cached_tokens_ += s.start_pos();
      if (is_last()) state.history.assign(s.prefix_tokens().begin(), s.prefix_tokens().end());
    }
    state.length += s.tokens_size();
    if (is_last()) state.history.insert(state.history.end(), s.tokens().begin(), s.tokens().end());
    for (int32_t b : s.block_table()) {
      bool held = false;
      for (int32_t h : state.blocks) held = held || h == b;
      if (held) continue;
      state.blocks.push_back(b);
      if (block_refs_[b]++ == 0) ++blocks_used_;
    }
  }
  ++steps_;
  tokens_ += total_tokens;
}

const std::vector<int32_t>& StageRuntime::HistoryLocked(uint64_t id) const {
  static const std::vector<int32_t> kNoHistory;
  auto known = sequences_.find(id);
  return known == sequences_.end() ? kNoHistory : known->second.history;
}

absl::Status StageRuntime::SampleLocked(const v1::StepPlan& plan, const StepOutput& out,
                                        v1::StepsResponse* response) {
  int64_t row = 0;
  const int64_t vocab = stage_->config().vocab_size;
  if (!out.tokens.empty()) return TakeChosenTokens(plan, out, response);
  if (out.rows > 0 && out.data.empty()) return SampleInPlaceLocked(plan, out, response);
  for (const v1::SequencePlan& s : plan.sequences()) {
    if (!s.sample()) continue;
    if (row >= out.rows || out.cols != vocab) {
      return absl::InternalError("stage returned fewer logits rows than sequences to sample");
    }
    absl::Span<const float> logits(out.data.data() + row * vocab, vocab);
    ++row;
    std::vector<float> masked;
    absl::Span<const float> sample_from = logits;
    if (!s.allowed_tokens().empty()) {
      masked.assign(logits.begin(), logits.end());
      MaskLogits(s.allowed_tokens(), absl::MakeSpan(masked));
      sample_from = masked;
    }
    SampleResult r =
        Sample(sample_from, ToParams(s.sampling()), SamplePosition(s.start_pos() + s.tokens_size()),
               HistoryLocked(s.sequence_id()));
    v1::SampledToken* tok = response->add_tokens();
    tok->set_sequence_id(s.sequence_id());
    tok->set_token_id(r.token);
    tok->set_logprob(r.logprob);
    if (s.sampling().top_logprobs() > 0) {
      for (auto [id, lp] : TopLogprobs(logits, s.sampling().top_logprobs())) {
        v1::TokenProb* p = tok->add_top();
        p->set_token_id(id);
        p->set_logprob(lp);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status StageRuntime::SampleInPlaceLocked(const v1::StepPlan& plan, const StepOutput& out,
                                               v1::StepsResponse* response) {
  if (sampler_ == nullptr || out.logits.data == nullptr) {
    return absl::InternalError("the stage kept its logits but there is no sampler");
  }
  std::vector<SamplingParams> params;
  std::vector<int64_t> positions;
  std::vector<absl::Span<const int32_t>> histories;
  std::vector<uint64_t> ids;
  for (const v1::SequencePlan& s : plan.sequences()) {
    if (!s.sample()) continue;
    params.push_back(ToParams(s.sampling()));
    positions.push_back(SamplePosition(s.start_pos() + s.tokens_size()));
    histories.push_back(HistoryLocked(s.sequence_id()));
    ids.push_back(s.sequence_id());
  }
  if (static_cast<int64_t>(ids.size()) != out.rows || out.logits.rows != out.rows) {
    return absl::InternalError("stage returned fewer logits rows than sequences to sample");
  }
  ASSIGN_OR_RETURN(std::vector<SampleResult> sampled,
                   sampler_(out.logits, params, positions, histories));
  if (sampled.size() != ids.size()) {
    return absl::InternalError("the sampler returned fewer tokens than rows");
  }
  const int64_t vocab = stage_->config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (sampled[i].token < 0 || sampled[i].token >= vocab) {
      return absl::InternalError(
          absl::StrCat("the sampler picked token ", sampled[i].token, " of ", vocab));
    }
    v1::SampledToken* tok = response->add_tokens();
    tok->set_sequence_id(ids[i]);
    tok->set_token_id(sampled[i].token);
    tok->set_logprob(sampled[i].logprob);
  }
  ++steps_sampled_in_place_;
  return absl::OkStatus();
}

LogitsSampler NewHostMemorySampler() {
  return
      [](const Tensor& logits, absl::Span<const SamplingParams> params,
         absl::Span<const int64_t> positions, absl::Span<const absl::Span<const int32_t>> histories)
          -> absl::StatusOr<std::vector<SampleResult>> {
        std::vector<SampleResult> out;
        out.reserve(params.size());
        for (size_t i = 0; i < params.size(); ++i) {
          absl::Span<const float> row(logits.row(static_cast<int64_t>(i)), logits.cols);
          out.push_back(Sample(row, params[i], positions[i], histories[i]));
        }
        return out;
      };
}

void StageRuntime::SetSampler(LogitsSampler sampler) {
  absl::MutexLock lock(&mu_);
  sampler_ = std::move(sampler);
}

uint64_t StageRuntime::steps_sampled_in_place() const {
  absl::MutexLock lock(&mu_);
  return steps_sampled_in_place_;
}

namespace {

// `token` when `allowed` is empty or allows it, else the next allowed id after it (wrapping): a
// stage that chooses its own tokens (a simulated one) stays deterministic under a mask.
int32_t AllowedNear(const std::string& allowed, int32_t token) {
  if (allowed.empty()) return token;
  const int64_t n = static_cast<int64_t>(allowed.size()) * 8;
  auto ok = [&](int64_t t) {
    return ((static_cast<unsigned char>(allowed[t >> 3]) >> (t & 7)) & 1) != 0;
  };
  for (int64_t step = 0; step < n; ++step) {
    const int64_t t = (token + step) % n;
    if (ok(t)) return static_cast<int32_t>(t);
  }
  return token;
}

}  // namespace

absl::Status StageRuntime::TakeChosenTokens(const v1::StepPlan& plan, const StepOutput& out,
                                            v1::StepsResponse* response) {
  size_t row = 0;
  for (const v1::SequencePlan& s : plan.sequences()) {
    if (!s.sample()) continue;
    if (row >= out.tokens.size()) {
      return absl::InternalError("stage returned fewer tokens than sequences to sample");
    }
    v1::SampledToken* tok = response->add_tokens();
    tok->set_sequence_id(s.sequence_id());
    tok->set_token_id(AllowedNear(s.allowed_tokens(), out.tokens[row++]));
    tok->set_logprob(0);
    if (s.sampling().top_logprobs() > 0) {
      v1::TokenProb* p = tok->add_top();
      p->set_token_id(tok->token_id());
      p->set_logprob(0);
    }
  }
  return absl::OkStatus();
}

StageStats StageRuntime::Stats() const {
  absl::MutexLock lock(&mu_);
  StageStats s;
  s.kv_blocks_total = stage_->kv_spec().num_blocks;
  s.kv_blocks_used = blocks_used_;
  s.live_sequences = sequences_.size();
  s.steps = steps_;
  s.tokens = tokens_;
  s.prefix_cached_tokens = prefix_cached_tokens_;
  s.busy_seconds = busy_seconds_;
  return s;
}

}  // namespace shardserve
