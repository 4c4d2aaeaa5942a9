// InferenceService: the router's public gRPC API over its pipeline replicas.
//
// Generate validates the request (INVALID_ARGUMENT naming the field), turns the prompt into
// token ids (text, ids, or chat messages through the model's chat template), hands the
// sequence to the least-loaded ready replica and streams what its RequestSink collects. A
// client cancel or a passed deadline cancels the sequence, which frees its KV blocks on the
// router and, with the next plan, on every stage. No ready replica: UNAVAILABLE saying why
// (naming the unreachable worker).
//
// Admission (AdmissionLimits, set before serving): a request that breaks a limit is rejected
// before it costs anything. At most max_queued_requests generations are admitted at once
// (waiting in a replica's queue or running); past that Start returns RESOURCE_EXHAUSTED at
// once. The slot is taken with one atomic increment that is also the check, so concurrent
// requests cannot overshoot, and is given back when the Generation is destroyed, however the
// front end ends it. With an api_key, every generation RPC needs the metadata
// `authorization: Bearer KEY` (UNAUTHENTICATED otherwise); grpc.health.v1 is a separate service
// and stays open.
//
// Reasoning: with a reasoning parser set (--reasoning-parser), a generation whose request
// separates reasoning (GenerateRequest.separate_reasoning; chat prompts by default) gets its own
// ReasoningParser, and Next moves the text inside <think> ... </think> from `text` into
// `reasoning_text`, so every front end sees the split the same way.
//
// Thread-safe; the replicas and tokenizer must outlive the service.
#ifndef SHARDSERVE_ROUTER_INFERENCE_SERVICE_H_
#define SHARDSERVE_ROUTER_INFERENCE_SERVICE_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "model/config.h"
#include "model/reasoning.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "router/metrics.h"
#include "router/replica.h"
#include "router/routing.h"
#include "router/structured_output.h"
#include "router/validation.h"
#include "router/worker_registry.h"
#include "shardserve/v1/inference.grpc.pb.h"

namespace shardserve {

class ClusterMonitor;

struct AdmissionLimits {
  int64_t max_queued_requests = 256;  // admitted generations, queued or running
  int64_t max_prompt_tokens = 0;      // 0: only the model's context bounds the prompt
  int32_t max_tokens_limit = 0;       // largest max_tokens accepted; 0: only the context
  int32_t max_stop_strings = kMaxStopStrings;
  std::string api_key;  // empty: no key needed
};

class InferenceServiceImpl final : public v1::InferenceService::Service {
 public:
  InferenceServiceImpl(std::string model_name, ModelConfig config, const Tokenizer* tokenizer,
                       std::optional<ChatTemplate> chat_template, std::vector<Replica*> replicas);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext*, const v1::TokenizeRequest*,
                        v1::TokenizeResponse*) override;
  grpc::Status Detokenize(grpc::ServerContext*, const v1::DetokenizeRequest*,
                          v1::DetokenizeResponse*) override;
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse*) override;
  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::GetModelInfoResponse*) override;
  // UNAVAILABLE until the cluster monitor is set.
  grpc::Status GetClusterStatus(grpc::ServerContext*, const v1::GetClusterStatusRequest*,
                                v1::GetClusterStatusResponse*) override;

  // True while at least one replica can take requests and the router is not draining.
  bool serving() const;
  // From now on new generations get UNAVAILABLE; admitted ones go on (see admitted()).
  void StartDraining() { draining_ = true; }

  // One admitted generation. Every front end (gRPC Generate, OpenAI HTTP, KServe) streams
  // through Start, Next and Cancel, so validation, routing and metrics live here only.
  struct Generation {
    Replica* replica = nullptr;  // where it started (a failover may move it)
    std::shared_ptr<Sequence> sequence;
    std::shared_ptr<RequestSink> sink;
    std::optional<ReasoningParser> reasoning;  // set when the output's reasoning is separated
    std::string request_id;
    RequestTrace trace;
    std::shared_ptr<void> admission_slot;  // released when the generation is destroyed
    int64_t messages = 0;                  // responses handed to the client so far
    // Chat with tools: the calls are parsed from the whole output, which is held back (text)
    // until the end (ToolCallFormat::kNone: no tools).
    ToolCallFormat tool_format = ToolCallFormat::kNone;
    std::string tool_text;
  };
  // Validates and tokenizes `request` and submits it to a ready replica (see routing.h), with
  // Generate's errors (INVALID_ARGUMENT naming the field, UNAVAILABLE saying why).
  absl::StatusOr<Generation> Start(const v1::GenerateRequest& request);
  int StreamBatch() const;
  // RequestSink::Take for `generation`; with a reasoning parser, `out` has the reasoning in
  // reasoning_text and the rest in text, and what the parser held back comes with the end.
  bool Next(Generation& generation, absl::Duration timeout, v1::GenerateResponse* out, bool* done,
            absl::Status* error);
  // Ends a generation whose client went away or ran out of time.
  void Cancel(Generation& generation);

  // Optional; set before serving. Must outlive the service.
  void set_metrics(RouterMetrics* metrics) { metrics_ = metrics; }
  // Set before serving: what GetClusterStatus answers from.
  void set_cluster_monitor(const ClusterMonitor* monitor) { monitor_ = monitor; }
  void set_admission_limits(AdmissionLimits limits) { admission_ = std::move(limits); }
  const AdmissionLimits& admission_limits() const { return admission_; }
  // The most prompt bytes that can still fit the prompt-token limit (--max-prompt-tokens, else
  // the context) given the longest token of the vocabulary: longer prompts are refused before
  // they are tokenized, and Tokenize takes no more text than this.
  int64_t max_prompt_bytes() const;
  void set_reasoning_parser(ReasoningParserKind kind) { reasoning_parser_ = kind; }
  // The parser Start gives a generation of `request` whose prompt is `prompt`: none without a
  // server parser or when the request keeps reasoning in text; starts_in_reasoning when the
  // prompt ends with an open <think>.
  std::optional<ReasoningParser> ReasoningParserFor(const v1::GenerateRequest& request,
                                                    absl::Span<const int32_t> prompt) const;
  void set_routing(RoutingPolicy policy) { routing_ = policy; }
  // Reported in GetModelInfo.spare_workers; optional, must outlive the service.
  void set_registry(const WorkerRegistry* registry) { registry_ = registry; }
  // UNAUTHENTICATED unless `context` carries `authorization: Bearer <api_key>` (or no key is set;
  // a null context is an in-process caller that checked the key itself).
  grpc::Status Authorize(const grpc::ServerContext* context) const;
  // Generations admitted and not yet destroyed.
  int64_t admitted() const { return admitted_.load(); }
  // Tokens per streamed message: `interval` (>= 1) fixes it; 0 (the default) adapts to load,
  // one per message up to 64 streams and up to 8 beyond (--stream-interval).
  void set_stream_interval(int interval) { stream_interval_ = interval; }
  // How long a stream holds a message back waiting for more tokens under load.
  static constexpr absl::Duration kMaxStreamBatchDelay = absl::Milliseconds(50);
  const std::string& model_name() const { return model_name_; }
  // The replicas now (more may be added while serving).
  std::vector<Replica*> replicas() const;
  // Serves from `replica` too (started, outliving the service); gives it the failover handler.
  void AddReplica(Replica* replica);

 private:
  absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& request) const;
  // Ready replicas other than `exclude`, with what routing weighs for `tokens`; the others'
  // reasons go to `not_ready` (optional).
  struct Candidates {
    std::vector<Replica*> replicas;
    std::vector<RoutingLoad> loads;
    std::vector<int64_t> sequences;
  };
  Candidates ReadyReplicas(absl::Span<const int32_t> tokens, const Replica* exclude,
                           std::vector<std::string>* not_ready) const;
  void SetFailover(Replica* replica);
  // The failover handler of every replica: places sequences of a failed pipeline elsewhere.
  std::vector<Handoff> Rehome(Replica* from, std::vector<Handoff> handoffs);
  absl::Status CheckAdmissionLimits(const v1::GenerateRequest& request) const;
  // A held slot of the bounded queue, or RESOURCE_EXHAUSTED.
  absl::StatusOr<std::shared_ptr<void>> ReserveSlot();

  const std::string model_name_;
  const ModelConfig config_;
  const Tokenizer* const tokenizer_;
  const std::optional<ChatTemplate> chat_template_;
  StructuredOutput structured_;
  mutable absl::Mutex replicas_mu_;
  std::vector<Replica*> replicas_ ABSL_GUARDED_BY(replicas_mu_);
  ModelLimits limits_;
  int64_t max_piece_bytes_ = 1;  // longest vocabulary piece
  std::vector<int32_t> eos_ids_;
  std::atomic<uint64_t> next_sequence_id_{1};
  RouterMetrics* metrics_ = nullptr;
  const ClusterMonitor* monitor_ = nullptr;
  AdmissionLimits admission_;
  ReasoningParserKind reasoning_parser_ = ReasoningParserKind::kNone;
  RoutingPolicy routing_ = RoutingPolicy::kPrefix;
  const WorkerRegistry* registry_ = nullptr;
  absl::Mutex route_mu_;  // serialises replica choice and submission
  std::atomic<int64_t> admitted_{0};
  int stream_interval_ = 0;
  std::atomic<bool> draining_{false};
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_INFERENCE_SERVICE_H_
