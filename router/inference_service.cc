#include "router/inference_service.h"

#include <algorithm>

#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/cluster_auth.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/wire.h"
#include "model/grammar/matcher.h"
#include "router/cluster_monitor.h"
#include "router/tool_calls.h"

namespace shardserve {
namespace {

// Moves the reasoning in `response`'s text into reasoning_text; at the end of the stream also
// what the parser held back.
void SplitReasoning(ReasoningParser& parser, bool done, v1::GenerateResponse* response) {
  ReasoningDelta d = parser.Push(response->text());
  if (done) {
    ReasoningDelta rest = parser.Finish();
    d.reasoning += rest.reasoning;
    d.content += rest.content;
  }
  response->set_text(std::move(d.content));
  response->set_reasoning_text(std::move(d.reasoning));
}

}  // namespace

InferenceServiceImpl::InferenceServiceImpl(std::string model_name, ModelConfig config,
                                           const Tokenizer* tokenizer,
                                           std::optional<ChatTemplate> chat_template,
                                           std::vector<Replica*> replicas)
    : model_name_(std::move(model_name)),
      config_(std::move(config)),
      tokenizer_(tokenizer),
      chat_template_(std::move(chat_template)),
      structured_(tokenizer, static_cast<int32_t>(config_.vocab_size)),
      replicas_(std::move(replicas)) {
  limits_.name = model_name_;
  limits_.context = config_.max_position_embeddings;
  limits_.vocab_size = static_cast<int32_t>(config_.vocab_size);
  eos_ids_ = config_.eos_token_ids;
  for (int32_t id : tokenizer_->eos_ids()) eos_ids_.push_back(id);
  for (Replica* r : replicas_) SetFailover(r);
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    max_piece_bytes_ = std::max<int64_t>(max_piece_bytes_, tokenizer_->IdToPiece(id).size());
  }
}

int64_t InferenceServiceImpl::max_prompt_bytes() const {
  const int64_t tokens =
      admission_.max_prompt_tokens > 0 ? admission_.max_prompt_tokens : limits_.context;
  // A piece never covers fewer bytes of text than it spells, but normalization (NFC, the
  // SentencePiece space) can grow text by up to ~3x: 4x keeps every prompt that could fit.
  return tokens * max_piece_bytes_ * 4 + 4096;
}

void InferenceServiceImpl::SetFailover(Replica* replica) {
  replica->set_failover([this](Replica* from, std::vector<Handoff> handoffs) {
    return Rehome(from, std::move(handoffs));
  });
}

InferenceServiceImpl::Candidates InferenceServiceImpl::ReadyReplicas(
    absl::Span<const int32_t> tokens, const Replica* exclude,
    std::vector<std::string>* not_ready) const {
  Candidates c;
  for (Replica* r : replicas()) {
    if (r == exclude) continue;
    if (!r->ready()) {
      if (not_ready != nullptr) {
        not_ready->push_back(absl::StrCat("pipeline ", r->index(), ": ", r->last_error()));
      }
      continue;
    }
    c.replicas.push_back(r);
    c.loads.push_back(routing_ == RoutingPolicy::kPrefix ? r->Routing(tokens) : RoutingLoad{});
    c.sequences.push_back(r->load());
  }
  return c;
}

std::vector<Replica*> InferenceServiceImpl::replicas() const {
  absl::MutexLock lock(&replicas_mu_);
  return replicas_;
}

void InferenceServiceImpl::AddReplica(Replica* replica) {
  SetFailover(replica);
  absl::MutexLock lock(&replicas_mu_);
  replicas_.push_back(replica);
}

std::vector<Handoff> InferenceServiceImpl::Rehome(Replica* from, std::vector<Handoff> handoffs) {
  std::vector<Handoff> left;
  for (Handoff& h : handoffs) {
    if (h.sequence->client_gone) continue;
    // The same choice a new request gets, among the other ready replicas.
    Candidates c = ReadyReplicas(h.sequence->tokens, from, nullptr);
    bool placed = false;
    while (!c.replicas.empty() && !placed) {
      const size_t i = ChooseReplica(routing_, c.loads, c.sequences);
      placed = c.replicas[i]->Adopt(h).ok();
      c.replicas.erase(c.replicas.begin() + i);
      c.loads.erase(c.loads.begin() + i);
      c.sequences.erase(c.sequences.begin() + i);
    }
    if (!placed) left.push_back(std::move(h));
  }
  return left;
}

bool InferenceServiceImpl::serving() const {
  if (draining_) return false;
  const std::vector<Replica*> all = replicas();
  return std::any_of(all.begin(), all.end(), [](Replica* r) { return r->ready(); });
}

grpc::Status InferenceServiceImpl::Authorize(const grpc::ServerContext* context) const {
  // In-process callers (the HTTP front end) pass no context and check the key themselves.
  if (admission_.api_key.empty() || context == nullptr) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing metadata authorization: Bearer <api key>");
  }
  // "<scheme> <key>": the scheme is case-insensitive (RFC 7235), the key compared in constant
  // time.
  absl::string_view value(it->second.data(), it->second.size());
  const size_t space = value.find(' ');
  absl::string_view key = space == absl::string_view::npos ? "" : value.substr(space);
  while (absl::ConsumePrefix(&key, " ")) {
  }
  if (space == absl::string_view::npos ||
      !absl::EqualsIgnoreCase(value.substr(0, space), "bearer") ||
      !ConstantTimeEquals(key, admission_.api_key)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid api key");
  }
  return grpc::Status::OK;
}

absl::Status InferenceServiceImpl::CheckAdmissionLimits(const v1::GenerateRequest& r) const {
  if (admission_.max_tokens_limit > 0 && r.max_tokens() > admission_.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: ", r.max_tokens(),
                                                   " is more than this server's limit of ",
                                                   admission_.max_tokens_limit));
  }
  size_t prompt_bytes = r.text().size();
  for (const v1::ChatMessage& m : r.chat().messages()) {
    prompt_bytes += m.role().size() + m.content().size();
  }
  if (static_cast<int64_t>(prompt_bytes) > max_prompt_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", prompt_bytes, " bytes cannot fit this server's limit of ",
        admission_.max_prompt_tokens > 0 ? admission_.max_prompt_tokens : limits_.context,
        " tokens (at most ", max_prompt_bytes(), " bytes; refused before tokenizing)"));
  }
  if (r.stop_size() > admission_.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("stop: ", r.stop_size(),
                                                   " strings, more than this server's limit of ",
                                                   admission_.max_stop_strings));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<void>> InferenceServiceImpl::ReserveSlot() {
  // The increment is the check: no window in which two requests both see the last free slot.
  if (admitted_.fetch_add(1) >= admission_.max_queued_requests) {
    admitted_.fetch_sub(1);
    return absl::ResourceExhaustedError(
        absl::StrCat("the router has ", admission_.max_queued_requests,
                     " requests queued or running (--max-queued-requests); retry later"));
  }
  return std::shared_ptr<void>(nullptr, [this](void*) { admitted_.fetch_sub(1); });
}

absl::StatusOr<std::vector<int32_t>> InferenceServiceImpl::PromptIds(
    const v1::GenerateRequest& r) const {
  switch (r.prompt_case()) {
    case v1::GenerateRequest::kText:
      return tokenizer_->Encode(r.text(), /*add_bos=*/true);
    case v1::GenerateRequest::kTokenIds:
      return std::vector<int32_t>(r.token_ids().ids().begin(), r.token_ids().ids().end());
    case v1::GenerateRequest::kChat: {
      if (!chat_template_.has_value()) {
        return absl::FailedPreconditionError("chat: this model has no chat template");
      }
      std::vector<ChatMessage> messages;
      // OpenAI's "developer" role is its newer name for "system": templates know only the latter.
      for (const v1::ChatMessage& m : r.chat().messages()) {
        ChatMessage msg{m.role() == "developer" ? "system" : m.role(), m.content()};
        for (const v1::ToolCall& c : m.tool_calls())
          msg.tool_calls.push_back({c.name(), c.arguments()});
        msg.tool_call_id = m.tool_call_id();
        messages.push_back(std::move(msg));
      }
      std::vector<ChatTool> tools;
      for (const v1::Tool& t : r.chat().tools()) {
        tools.push_back({t.name(), t.description(), t.parameters()});
      }
      auto text = chat_template_->Render(messages, tools, /*add_generation_prompt=*/true);
      if (!text.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("chat.messages: ", text.status().message()));
      }
      return tokenizer_->Encode(*text, /*add_bos=*/false);
    }
    default:
      return absl::InvalidArgumentError("prompt: empty");
  }
}

namespace {

// The first token's mask, once max_tokens is known to leave room for the shortest output.
absl::StatusOr<std::string> FirstMask(grammar::Matcher& matcher, int32_t max_tokens,
                                      const std::string& field) {
  const int64_t shortest = matcher.MinBytesToEnd();
  if (shortest > max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: ", max_tokens, " cannot hold the shortest output ", field,
                     " allows (", shortest, " bytes; a token may carry only one)"));
  }
  auto mask = matcher.Mask(max_tokens - 1);
  if (!mask.ok())
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", mask.status().message()));
  return mask;
}

}  // namespace

absl::StatusOr<InferenceServiceImpl::Generation> InferenceServiceImpl::Start(
    const v1::GenerateRequest& request) {
  if (draining_) {
    return absl::UnavailableError(
        "this router is draining (shutting down): it finishes the streams it has and admits no "
        "new requests");
  }
  RETURN_IF_ERROR(ValidateGenerateRequest(request, limits_));
  RETURN_IF_ERROR(CheckAdmissionLimits(request));
  // Taken before tokenizing, so that a flood of large prompts is turned away cheaply too.
  ASSIGN_OR_RETURN(std::shared_ptr<void> slot, ReserveSlot());
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptIds(request));
  if (admission_.max_prompt_tokens > 0 &&
      static_cast<int64_t>(prompt.size()) > admission_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt.size(),
                                                   " tokens, more than this server's limit of ",
                                                   admission_.max_prompt_tokens));
  }
  RETURN_IF_ERROR(ValidatePromptLength(prompt.size(), request.max_tokens(), limits_));
  const int32_t max_tokens =
      ResolveMaxTokens(request.max_tokens(), prompt.size(), limits_, admission_.max_tokens_limit);
  std::shared_ptr<grammar::Matcher> matcher;
  std::string allowed_tokens;
  if (request.has_response_format()) {
    ASSIGN_OR_RETURN(matcher, structured_.NewMatcher(request.response_format()));
    ASSIGN_OR_RETURN(allowed_tokens, FirstMask(*matcher, max_tokens, "response_format"));
  }
  // Tools: the calls are parsed from the output; `required` and a named function are enforced
  // by a grammar of calls.
  ToolCallFormat tool_format = ToolCallFormat::kNone;
  if (request.prompt_case() == v1::GenerateRequest::kChat && request.chat().tools_size() > 0) {
    const v1::ToolChoice& choice = request.chat().tool_choice();
    if (!(choice.has_mode() && choice.mode() == v1::TOOL_CHOICE_MODE_NONE)) {
      tool_format = chat_template_->tool_call_format();
    }
    const bool forced = choice.has_function() ||
                        (choice.has_mode() && choice.mode() == v1::TOOL_CHOICE_MODE_REQUIRED);
    if (forced) {
      ASSIGN_OR_RETURN(std::string gbnf,
                       ToolCallGbnf(tool_format, request.chat().tools(),
                                    choice.has_function() ? choice.function() : ""));
      ASSIGN_OR_RETURN(matcher, structured_.NewMatcherForGbnf(gbnf, "chat.tools"));
      ASSIGN_OR_RETURN(allowed_tokens, FirstMask(*matcher, max_tokens, "tool_choice"));
    }
  }
  // Drawn outside the lock; the bit generator is this thread's own.
  thread_local absl::BitGen bitgen;
  const uint64_t fresh_seed =
      absl::Uniform<uint64_t>(absl::IntervalClosed, bitgen, 0, kMaxDrawnSeed);
  // Choosing and submitting under one lock: concurrent requests see each other's load, instead
  // of all picking the replica that looked idlest a moment ago.
  absl::MutexLock route_lock(&route_mu_);
  std::vector<std::string> not_ready;
  Candidates candidates = ReadyReplicas(prompt, nullptr, &not_ready);
  if (candidates.replicas.empty()) {
    return absl::UnavailableError(
        absl::StrCat("no pipeline is ready; ", absl::StrJoin(not_ready, "; ")));
  }

  Generation g;
  g.admission_slot = std::move(slot);
  g.sequence = std::make_shared<Sequence>();
  Sequence& seq = *g.sequence;
  seq.id = next_sequence_id_++;
  seq.prompt_len = prompt.size();
  seq.follows_text = request.prompt_case() != v1::GenerateRequest::kChat;
  seq.tokens = std::move(prompt);
  seq.max_tokens = max_tokens;
  if (!request.ignore_eos()) seq.stop_ids.insert(eos_ids_.begin(), eos_ids_.end());
  seq.stop_ids.insert(request.stop_token_ids().begin(), request.stop_token_ids().end());
  seq.sampling = ResolveSampling(request, fresh_seed);
  seq.matcher = std::move(matcher);
  seq.allowed_tokens = std::move(allowed_tokens);
  // Unique across routers and restarts, as vLLM's: 128 random bits in hex.
  g.request_id = request.request_id().empty()
                     ? absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(bitgen), absl::kZeroPad16),
                                    absl::Hex(absl::Uniform<uint64_t>(bitgen), absl::kZeroPad16))
                     : request.request_id();
  g.reasoning = ReasoningParserFor(request, seq.tokens);
  g.tool_format = tool_format;
  g.sink = std::make_shared<RequestSink>();
  const std::vector<std::string> stops(request.stop().begin(), request.stop().end());
  // A replica that looked ready may have failed a moment ago: the next best one takes it.
  absl::Status submitted;
  while (!candidates.replicas.empty()) {
    const size_t i = ChooseReplica(routing_, candidates.loads, candidates.sequences);
    submitted = candidates.replicas[i]->Submit(g.sequence, g.sink, stops);
    if (submitted.ok()) {
      g.replica = candidates.replicas[i];
      break;
    }
    candidates.replicas.erase(candidates.replicas.begin() + i);
    candidates.loads.erase(candidates.loads.begin() + i);
    candidates.sequences.erase(candidates.sequences.begin() + i);
  }
  RETURN_IF_ERROR(submitted);
  if (metrics_ != nullptr) metrics_->OnStart(g.trace, seq.prompt_len);
  return g;
}

std::optional<ReasoningParser> InferenceServiceImpl::ReasoningParserFor(
    const v1::GenerateRequest& request, absl::Span<const int32_t> prompt) const {
  if (reasoning_parser_ == ReasoningParserKind::kNone) return std::nullopt;
  const bool separate = request.has_separate_reasoning()
                            ? request.separate_reasoning()
                            : request.prompt_case() == v1::GenerateRequest::kChat;
  if (!separate) return std::nullopt;
  ReasoningParser::Options options;
  // The prompt's last tokens are enough to see whether it ends with the start tag.
  const size_t tail = std::min<size_t>(prompt.size(), 16);
  options.starts_in_reasoning = PromptOpensReasoning(
      tokenizer_->Decode(prompt.subspan(prompt.size() - tail), /*skip_special=*/false),
      options.start_tag);
  return ReasoningParser(std::move(options));
}

bool InferenceServiceImpl::Next(Generation& g, absl::Duration timeout, v1::GenerateResponse* out,
                                bool* done, absl::Status* error) {
  // The first message (time to first token) is never held back.
  const int batch = g.messages == 0 ? 1 : StreamBatch();
  bool got = g.sink->Take(timeout, out, done, error, batch, kMaxStreamBatchDelay);
  if (got && g.messages++ == 0 && g.sequence != nullptr) out->set_seed(g.sequence->sampling.seed());
  if (g.reasoning.has_value() && (got || *done)) {
    SplitReasoning(*g.reasoning, *done, out);
    got = got || out->ByteSizeLong() > 0;
  }
  if (g.tool_format != ToolCallFormat::kNone && (got || *done)) {
    // Held back until the end, then split into content and calls.
    g.tool_text += out->text();
    out->clear_text();
    if (*done && error->ok()) {
      ParsedOutput parsed = ParseToolCalls(g.tool_format, g.tool_text);
      out->set_text(parsed.content);
      for (v1::ToolCall& c : parsed.calls) *out->add_tool_calls() = std::move(c);
      if (!parsed.calls.empty()) out->set_finish_reason(v1::FINISH_REASON_TOOL_CALLS);
      got = true;
    }
  }
  if (metrics_ != nullptr && got) metrics_->OnOutput(g.trace, out, *done, *error);
  return got;
}

int InferenceServiceImpl::StreamBatch() const {
  if (stream_interval_ > 0) return stream_interval_;
  // One token per message until 64 streams run, then one more per 64 streams, up to 8.
  const int64_t streams = admitted_.load(std::memory_order_relaxed);
  return static_cast<int>(std::clamp<int64_t>(streams / 64 + (streams > 64 ? 1 : 0), 1, 8));
}

void InferenceServiceImpl::Cancel(Generation& g) {
  // After a failover the sequence may be on any replica (or between two): the flag stops a
  // handoff in progress, and every replica drops it if it holds it.
  g.sequence->client_gone = true;
  for (Replica* r : replicas()) r->Cancel(g.sequence->id);
  if (metrics_ != nullptr) metrics_->OnCancel(g.trace);
}

grpc::Status InferenceServiceImpl::Generate(grpc::ServerContext* context,
                                            const v1::GenerateRequest* request,
                                            grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
  auto started = Start(*request);
  if (!started.ok()) return ToGrpc(started.status());
  Generation& g = *started;

  const auto deadline = context->deadline();
  while (true) {
    v1::GenerateResponse response;
    bool done = false;
    absl::Status error;
    if (Next(g, absl::Milliseconds(50), &response, &done, &error) && response.ByteSizeLong() > 0) {
      response.set_request_id(g.request_id);
      if (!writer->Write(response)) {
        Cancel(g);
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
    }
    if (done) return error.ok() ? grpc::Status::OK : ToGrpc(error);
    const auto now = std::chrono::system_clock::now();
    // A request waiting for a pipeline (its own failed) is answered just before its deadline,
    // so that the client hears which stage is missing rather than its own timeout.
    if (now >= deadline - std::chrono::milliseconds(200)) {
      if (const std::string why = g.sink->waiting(); !why.empty()) {
        Cancel(g);
        return grpc::Status(
            grpc::StatusCode::UNAVAILABLE,
            absl::StrCat(why, "; no pipeline took the request before its deadline"));
      }
    }
    const bool late = now >= deadline;
    if (late || context->IsCancelled()) {
      Cancel(g);
      if (late) {
        return grpc::Status(
            grpc::StatusCode::DEADLINE_EXCEEDED,
            absl::StrCat("deadline passed after ", g.sequence->generated(), " tokens"));
      }
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    }
  }
}

grpc::Status InferenceServiceImpl::Tokenize(grpc::ServerContext* context,
                                            const v1::TokenizeRequest* req,
                                            v1::TokenizeResponse* resp) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
  if (absl::Status s = ValidateModelName(req->model(), limits_); !s.ok()) return ToGrpc(s);
  if (static_cast<int64_t>(req->text().size()) > max_prompt_bytes()) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("text: ", req->text().size(), " bytes; this server tokenizes at most ",
                     max_prompt_bytes(), " (what its prompt-token limit can hold)"));
  }
  for (int32_t id : tokenizer_->Encode(req->text(), req->add_bos())) resp->add_ids(id);
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::Detokenize(grpc::ServerContext* context,
                                              const v1::DetokenizeRequest* req,
                                              v1::DetokenizeResponse* resp) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
  if (absl::Status s = ValidateModelName(req->model(), limits_); !s.ok()) return ToGrpc(s);
  for (int i = 0; i < req->ids_size(); ++i) {
    if (req->ids(i) < 0 || req->ids(i) >= tokenizer_->vocab_size()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("ids[", i, "]: ", req->ids(i), " is outside [0, ",
                                       tokenizer_->vocab_size(), ")"));
    }
  }
  std::vector<int32_t> ids(req->ids().begin(), req->ids().end());
  resp->set_text(tokenizer_->Decode(ids, req->skip_special_tokens()));
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::ListModels(grpc::ServerContext* context,
                                              const v1::ListModelsRequest*,
                                              v1::ListModelsResponse* resp) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
  v1::ModelSummary* m = resp->add_models();
  m->set_name(model_name_);
  m->set_architecture(std::string(ArchitectureName(config_.architecture)));
  m->set_context_length(config_.max_position_embeddings);
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::GetClusterStatus(grpc::ServerContext* context,
                                                    const v1::GetClusterStatusRequest* req,
                                                    v1::GetClusterStatusResponse* resp) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
  if (monitor_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the cluster monitor is not running");
  }
  *resp = monitor_->Status(req->history());
  if (resp->sampled_at_unix() == 0) {
    return grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        "the cluster monitor has not polled the workers yet; try again in a second");
  }
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::GetModelInfo(grpc::ServerContext* context,
                                                const v1::GetModelInfoRequest* req,
                                                v1::GetModelInfoResponse* resp) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
  if (absl::Status s = ValidateModelName(req->model(), limits_); !s.ok()) return ToGrpc(s);
  resp->set_name(model_name_);
  resp->set_architecture(std::string(ArchitectureName(config_.architecture)));
  resp->set_num_layers(config_.num_layers);
  resp->set_hidden_size(config_.hidden_size);
  resp->set_vocab_size(config_.vocab_size);
  resp->set_context_length(config_.max_position_embeddings);
  resp->set_bos_token_id(tokenizer_->bos_id());
  for (int32_t id : eos_ids_) resp->add_eos_token_ids(id);
  for (Replica* r : replicas()) {
    v1::PipelineLayout* p = resp->add_pipelines();
    p->set_ready(r->ready());
    for (const StageEndpoint& s : r->stages()) {
      v1::StageLayout* st = p->add_stages();
      st->set_worker_address(s.address);
      st->set_layer_begin(s.layers.begin);
      st->set_layer_end(s.layers.end);
      st->set_ready(r->ready());
    }
    resp->set_kv_blocks_per_pipeline(r->kv_blocks());
  }
  if (registry_ != nullptr) {
    for (const std::string& w : registry_->Spares()) resp->add_spare_workers(w);
  }
  return grpc::Status::OK;
}

}  // namespace shardserve
