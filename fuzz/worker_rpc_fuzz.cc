// Fuzzes a worker's RPCs as a stranger on the network would send them: a real gRPC server
// (WorkerServiceImpl behind the cluster credential, --model-root ../shared/models) reached over
// an in-process channel. The fuzz bytes pick the RPC (byte 0), the credential the call carries
// (byte 1: none, a wrong secret, the cluster's) and the request message (the rest, parsed as that
// RPC's request; unparsable bytes send an empty one).
//
// Invariants:
//   - without the credential every RPC is UNAUTHENTICATED, with a wrong one PERMISSION_DENIED,
//     and neither changes anything the worker reports (Stats, Describe);
//   - with the credential no call ends INTERNAL or UNKNOWN, and none crashes the worker (ASan,
//     UBSan), whatever the fields say. ConnectNext targets are kept on a closed loopback port so
//     that inputs never dial out.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/cluster_auth.h"
#include "fuzz/fuzz_util.h"
#include "kernels/backend.h"
#include "shardserve/v1/worker.grpc.pb.h"
#include "worker/worker_service.h"

namespace {

namespace v1 = ::shardserve::v1;
using shardserve::fuzz::Check;

constexpr char kSecret[] = "fuzz-cluster-secret-0123456789abcdef";

struct Worker {
  std::unique_ptr<shardserve::Backend> backend;
  std::unique_ptr<shardserve::WorkerServiceImpl> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::WorkerService::Stub> stub;
};

Worker& Get() {
  static Worker* w = [] {
    auto* w = new Worker;
    w->backend = shardserve::NewCpuBackend({1});
    shardserve::WorkerOptions options;
    options.auth = shardserve::ClusterAuthenticator(kSecret, /*mtls=*/false, /*insecure=*/false);
    options.model_root = "../shared/models";
    options.recv_timeout = absl::Milliseconds(50);
    w->service = std::make_unique<shardserve::WorkerServiceImpl>(w->backend.get(), options);
    grpc::ServerBuilder builder;
    builder.RegisterService(w->service.get());
    w->server = builder.BuildAndStart();
    w->stub = v1::WorkerService::NewStub(w->server->InProcessChannel(grpc::ChannelArguments()));
    return w;
  }();
  return *w;
}

std::unique_ptr<grpc::ClientContext> Context(int credential) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (credential == 1) c->AddMetadata(shardserve::kClusterSecretMetadata, "wrong-secret-000000");
  if (credential == 2) c->AddMetadata(shardserve::kClusterSecretMetadata, kSecret);
  return c;
}

grpc::Status Call(Worker& w, int rpc, int credential, const std::string& bytes) {
  switch (rpc) {
    case 0: {
      v1::DescribeResponse r;
      return w.stub->Describe(Context(credential).get(), v1::DescribeRequest(), &r);
    }
    case 1: {
      v1::LoadShardRequest q;
      if (!q.ParseFromString(bytes)) q.Clear();  // e.g. invalid UTF-8: not sendable
      // A real KV pool is allocated at load: keep it within the fuzzer's memory limit (the
      // worker's own bound is the machine's memory).
      q.set_kv_num_blocks(std::min(q.kv_num_blocks(), 256));
      v1::LoadShardResponse r;
      return w.stub->LoadShard(Context(credential).get(), q, &r);
    }
    case 2: {
      v1::ConnectNextRequest q;
      if (!q.ParseFromString(bytes)) q.Clear();  // e.g. invalid UTF-8: not sendable
      if (!q.next_address().empty()) q.set_next_address("127.0.0.1:1");
      v1::ConnectNextResponse r;
      return w.stub->ConnectNext(Context(credential).get(), q, &r);
    }
    case 3: {
      v1::ActivationsRequest q;
      if (!q.ParseFromString(bytes)) q.Clear();  // e.g. invalid UTF-8: not sendable
      auto context = Context(credential);
      v1::ActivationsResponse r;
      auto writer = w.stub->Activations(context.get(), &r);
      writer->Write(q);
      writer->WritesDone();
      return writer->Finish();
    }
    case 4: {
      v1::StepsRequest q;
      if (!q.ParseFromString(bytes)) q.Clear();  // e.g. invalid UTF-8: not sendable
      auto context = Context(credential);
      auto stream = w.stub->Steps(context.get());
      stream->Write(q);
      stream->WritesDone();
      v1::StepsResponse r;
      while (stream->Read(&r)) {
      }
      return stream->Finish();
    }
    case 5: {
      v1::DrainResponse r;
      return w.stub->Drain(Context(credential).get(), v1::DrainRequest(), &r);
    }
    case 6: {
      v1::PrepareLinkRequest q;
      if (!q.ParseFromString(bytes)) q.Clear();  // e.g. invalid UTF-8: not sendable
      v1::PrepareLinkResponse r;
      return w.stub->PrepareLink(Context(credential).get(), q, &r);
    }
    default: {
      v1::StatsResponse r;
      return w.stub->Stats(Context(credential).get(), v1::StatsRequest(), &r);
    }
  }
}

std::string Snapshot(Worker& w) {
  v1::StatsResponse stats;
  Check(w.stub->Stats(Context(2).get(), v1::StatsRequest(), &stats).ok(), "Stats answers");
  v1::DescribeResponse describe;
  Check(w.stub->Describe(Context(2).get(), v1::DescribeRequest(), &describe).ok(),
        "Describe answers");
  return std::to_string(describe.loaded()) + describe.model_path() + stats.SerializeAsString();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Worker& w = Get();
  const int rpc = data[0] % 8;
  const int credential = data[1] % 3;
  const std::string bytes(reinterpret_cast<const char*>(data + 2), size - 2);
  const std::string before = credential == 2 ? std::string() : Snapshot(w);
  const grpc::Status s = Call(w, rpc, credential, bytes);
  if (credential == 0) {
    Check(s.error_code() == grpc::StatusCode::UNAUTHENTICATED, "no credential: UNAUTHENTICATED");
  } else if (credential == 1) {
    Check(s.error_code() == grpc::StatusCode::PERMISSION_DENIED,
          "wrong credential: PERMISSION_DENIED");
  } else {
    Check(
        s.error_code() != grpc::StatusCode::INTERNAL && s.error_code() != grpc::StatusCode::UNKNOWN,
        "a cluster caller gets a meaningful status");
  }
  if (credential != 2) Check(Snapshot(w) == before, "a stranger changes nothing");
  return 0;
}
