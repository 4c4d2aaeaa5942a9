#include "router/pipeline.h"

#include <future>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/cluster_auth.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/wire.h"
#include "router/link_choice.h"

namespace shardserve {
namespace {

// Every call to a worker carries the cluster credential.
void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  AttachClusterCredential(context);
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace

std::unique_ptr<v1::WorkerService::Stub> NewWorkerStub(const std::string& address) {
  return v1::WorkerService::NewStub(NewClusterChannel(address));
}

Pipeline::Pipeline(std::vector<StageEndpoint> stages, PipelineOptions options)
    : stages_(std::move(stages)), options_(std::move(options)) {
  for (const StageEndpoint& s : stages_) stubs_.push_back(NewWorkerStub(s.address));
}

Pipeline::~Pipeline() { Close(); }

void Pipeline::ReplaceStage(int i, const std::string& address) {
  stages_[i].address = address;
  stubs_[i] = NewWorkerStub(address);
}

absl::Status Pipeline::WorkerError(int stage, absl::string_view what, const grpc::Status& s) const {
  return absl::UnavailableError(absl::StrCat("worker ", stages_[stage].address, " (stage ", stage,
                                             ") ", what, ": ", s.error_message()));
}

absl::Status Pipeline::LinkStages(const std::vector<v1::DescribeResponse>& described) {
  const int n = static_cast<int>(stages_.size());
  // Links are set up from the last hop back: a receiver that needs an id (NCCL) makes it in
  // PrepareLink and starts joining, then its sender joins in ConnectNext.
  std::vector<v1::LinkKind> links(n > 0 ? n - 1 : 0, v1::LINK_KIND_GRPC);
  for (int i = n - 1; i >= 0; --i) {
    v1::ConnectNextRequest req;
    req.set_owner(options_.owner);
    req.set_link_version(kLinkVersion);
    if (i + 1 < n) {
      req.set_next_address(stages_[i + 1].address);
      links[i] = ChooseLink(described[i], described[i + 1]);
      req.set_link(links[i]);
      if (links[i] != v1::LINK_KIND_GRPC) {
        v1::PrepareLinkRequest prepare;
        prepare.set_owner(options_.owner);
        prepare.set_link(links[i]);
        prepare.set_previous_address(stages_[i].address);
        prepare.set_link_version(kLinkVersion);
        grpc::ClientContext context;
        SetDeadline(&context, options_.rpc_timeout);
        v1::PrepareLinkResponse prepared;
        grpc::Status s = stubs_[i + 1]->PrepareLink(&context, prepare, &prepared);
        if (!s.ok()) {
          return WorkerError(i + 1, "cannot prepare its " + LinkKindName(links[i]) + " link", s);
        }
        req.set_link_id(prepared.link_id());
      }
    }
    grpc::ClientContext context;
    SetDeadline(&context, options_.rpc_timeout);
    v1::ConnectNextResponse resp;
    grpc::Status s = stubs_[i]->ConnectNext(&context, req, &resp);
    if (!s.ok()) return WorkerError(i, "cannot link to the next stage", s);
  }
  {
    absl::MutexLock lock(&links_mu_);
    links_ = links;
  }
  std::vector<std::string> hops;
  for (int i = 0; i + 1 < n; ++i) {
    hops.push_back(absl::StrCat(i, "->", i + 1, " ", LinkKindName(links[i])));
  }
  if (!hops.empty()) LOG(INFO) << "pipeline links: " << absl::StrJoin(hops, ", ");
  return absl::OkStatus();
}

absl::Status Pipeline::Connect(ResultFn on_result, FailureFn on_failure) {
  Close();
  on_result_ = std::move(on_result);
  on_failure_ = std::move(on_failure);
  failed_ = false;
  closing_ = false;
  const int n = static_cast<int>(stages_.size());
  unusable_stage_ = -1;
  unusable_is_leased_ = false;
  unusable_why_.clear();
  std::vector<v1::DescribeResponse> described(n);
  for (int i = 0; i < n; ++i) {
    grpc::ClientContext context;
    SetDeadline(&context, options_.rpc_timeout);
    v1::DescribeResponse& info = described[i];
    grpc::Status s = stubs_[i]->Describe(&context, v1::DescribeRequest(), &info);
    if (!s.ok()) {
      unusable_stage_ = i;
      unusable_why_ = "unreachable";
      return WorkerError(i, "is unreachable", s);
    }
  }
  // Stages load in parallel: each reads only its own tensors.
  std::vector<std::future<grpc::Status>> loads;
  for (int i = 0; i < n; ++i) {
    loads.push_back(std::async(std::launch::async, [this, i, n] {
      v1::LoadShardRequest req;
      req.set_model_path(options_.model_path);
      req.set_layer_begin(stages_[i].layers.begin);
      req.set_layer_end(stages_[i].layers.end);
      req.set_is_first(i == 0);
      req.set_is_last(i == n - 1);
      req.set_dtype("auto");
      req.set_kv_block_size(options_.kv_block_size);
      req.set_kv_num_blocks(options_.kv_num_blocks);
      req.set_max_step_tokens(options_.max_step_tokens);
      req.set_owner(options_.owner);
      req.set_model_name(options_.model_name);
      grpc::ClientContext context;
      SetDeadline(&context, options_.load_timeout);
      v1::LoadShardResponse resp;
      return stubs_[i]->LoadShard(&context, req, &resp);
    }));
  }
  absl::Status first_error;
  for (int i = 0; i < n; ++i) {
    grpc::Status s = loads[i].get();
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && unusable_stage_ < 0) {
      unusable_stage_ = i;
      unusable_is_leased_ = true;
      unusable_why_ = "leased by another router";
    } else if (s.error_code() == grpc::StatusCode::UNAVAILABLE && unusable_stage_ < 0) {
      // Its device failed, or it is shutting down: a spare may take its place.
      unusable_stage_ = i;
      unusable_why_ = s.error_message();
    }
    if (!s.ok() && first_error.ok()) first_error = WorkerError(i, "cannot load its shard", s);
  }
  RETURN_IF_ERROR(first_error);
  RETURN_IF_ERROR(LinkStages(described));
  streams_.resize(n);
  for (int i = 0; i < n; ++i) {
    streams_[i].context = std::make_unique<grpc::ClientContext>();
    AttachClusterCredential(streams_[i].context.get());
    // The control stream lives as long as the pipeline; Close() cancels it.
    streams_[i].stream = stubs_[i]->Steps(streams_[i].context.get());
  }
  for (int i = 0; i < n; ++i) streams_[i].reader = std::thread([this, i] { ReadLoop(i); });
  LOG(INFO) << "pipeline ready: " << n << " stages";
  return absl::OkStatus();
}

void Pipeline::Fail(const absl::Status& status) {
  if (closing_ || failed_.exchange(true)) return;
  LOG(WARNING) << "pipeline failed: " << status;
  if (on_failure_) on_failure_(status);
}

void Pipeline::ReadLoop(int stage) {
  Stream& st = streams_[stage];
  v1::StepsResponse resp;
  const bool last = stage + 1 == static_cast<int>(stages_.size());
  while (st.stream->Read(&resp)) {
    if (resp.error_code() != 0) {
      Fail(absl::UnavailableError(absl::StrCat("worker ", stages_[stage].address, " (stage ", stage,
                                               ") failed step ", resp.step_id(), ": ",
                                               resp.error_message())));
      continue;
    }
    if (!last) {
      Fail(absl::UnavailableError(absl::StrCat("worker ", stages_[stage].address, " (stage ", stage,
                                               ") sent a result but is not the last stage")));
      continue;
    }
    if (!failed_ && on_result_) on_result_(resp);
  }
  if (closing_) return;
  // The worker's own status (e.g. UNAUTHENTICATED, or the transport's error), not an invented
  // one: it reaches the log, the client's error and the failure metrics.
  grpc::Status status = FinishStream(stage);
  if (status.ok()) status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker ended it");
  Fail(absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                    absl::StrCat("worker ", stages_[stage].address, " (stage ", stage,
                                 ") closed its control stream: ", status.error_message())));
}

grpc::Status Pipeline::FinishStream(int i) {
  absl::MutexLock lock(&write_mu_);
  Stream& st = streams_[i];
  if (st.finished || st.stream == nullptr) return grpc::Status::OK;
  st.finished = true;
  return st.stream->Finish();
}

absl::Status Pipeline::Send(v1::StepPlan plan) {
  v1::StepsRequest req;
  req.mutable_plan()->Swap(&plan);
  req.set_owner(options_.owner);
  absl::MutexLock lock(&write_mu_);
  for (size_t i = 0; i < streams_.size(); ++i) {
    if (streams_[i].finished || !streams_[i].stream->Write(req)) {
      return absl::UnavailableError(
          absl::StrCat("worker ", stages_[i].address, " (stage ", i, ") control stream is broken"));
    }
  }
  return absl::OkStatus();
}

void Pipeline::Close() {
  closing_ = true;
  for (Stream& st : streams_) {
    if (st.context) st.context->TryCancel();
  }
  for (size_t i = 0; i < streams_.size(); ++i) {
    if (streams_[i].reader.joinable()) streams_[i].reader.join();
    (void)FinishStream(static_cast<int>(i));
  }
  streams_.clear();
}

absl::StatusOr<std::vector<v1::StatsResponse>> Pipeline::Stats() const {
  std::vector<v1::StatsResponse> out(stages_.size());
  for (size_t i = 0; i < stages_.size(); ++i) {
    grpc::ClientContext context;
    SetDeadline(&context, options_.rpc_timeout);
    grpc::Status s = stubs_[i]->Stats(&context, v1::StatsRequest(), &out[i]);
    if (!s.ok()) return WorkerError(i, "Stats failed", s);
  }
  return out;
}

}  // namespace shardserve
