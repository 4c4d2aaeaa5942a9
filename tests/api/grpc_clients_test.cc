// gRPC health and v1alpha reflection on the router and every worker, and the Python and Node
// example clients each streaming a story, and KServe's answers (an unknown model as
// InferenceService answers it), all against a real local cluster.
#include <chrono>
#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using json = nlohmann::json;

json LastJsonLine(const std::string& output) {
  const size_t start =
      output.rfind("\n{") == std::string::npos ? output.find('{') : output.rfind("\n{") + 1;
  return json::parse(output.substr(start == std::string::npos ? 0 : start), nullptr, false);
}

class GrpcClients : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster({.model = Stories260K(), .stages = 2});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static Cluster* cluster_;
};
Cluster* GrpcClients::cluster_ = nullptr;

TEST_F(GrpcClients, HealthAndReflectionAnswerOnEveryServer) {
  auto stubs = api_testing::PythonStubs();
  ASSERT_TRUE(stubs.ok()) << stubs.status();
  std::string addresses = cluster_->router_address();
  for (const std::string& w : cluster_->worker_addresses()) addresses += " " + w;
  auto r = api_testing::Run(absl::StrCat("PYTHONPATH='", *stubs, "' ", api_testing::Python(),
                                         " tests/api/health_reflection.py ", addresses));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = LastJsonLine(r.output);
  ASSERT_TRUE(got.is_object()) << r.output;
  json router = got[cluster_->router_address()];
  EXPECT_EQ(router["health"], "SERVING");
  const auto has = [](const json& services, const std::string& name) {
    return std::find(services.begin(), services.end(), name) != services.end();
  };
  EXPECT_TRUE(has(router["services"], "shardserve.v1.InferenceService")) << router;
  EXPECT_TRUE(has(router["services"], "grpc.health.v1.Health")) << router;
  for (const std::string& w : cluster_->worker_addresses()) {
    EXPECT_EQ(got[w]["health"], "SERVING") << w;
    EXPECT_TRUE(has(got[w]["services"], "shardserve.v1.WorkerService")) << got[w];
  }
}

TEST_F(GrpcClients, PythonExampleStreamsAStory) {
  auto stubs = api_testing::PythonStubs();
  ASSERT_TRUE(stubs.ok()) << stubs.status();
  auto r = api_testing::Run(absl::StrCat(
      "PYTHONPATH='", *stubs, "' ", api_testing::Python(), " clients/python/story.py --server ",
      cluster_->router_address(), " --max-tokens 40 --seed 5 --deadline-s 30 --api-key k --json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = LastJsonLine(r.output);
  auto want =
      RunCompletion(cluster_->router_address(), TextRequest("Once upon a time", 40, 0.8f, 5),
                    absl::Seconds(60), nullptr);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(got["text"], want->text);
  EXPECT_EQ(got["completion_tokens"], want->usage.completion_tokens());

  // A deadline too short to finish ends the call with DEADLINE_EXCEEDED, not a hang.
  r = api_testing::Run(absl::StrCat("PYTHONPATH='", *stubs, "' ", api_testing::Python(),
                                    " clients/python/story.py --server ",
                                    cluster_->router_address(), " --deadline-s 0.001"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("DEADLINE_EXCEEDED"), std::string::npos) << r.output;
}

TEST_F(GrpcClients, NodeExampleStreamsAStory) {
  auto modules = api_testing::NodeModules();
  ASSERT_TRUE(modules.ok()) << modules.status();
  auto r = api_testing::Run(absl::StrCat("NODE_PATH='", *modules, "' node clients/node/story.js ",
                                         "--server ", cluster_->router_address(),
                                         " --max-tokens 40 --seed 5 --deadline-s 30 --api-key k "
                                         "--json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = LastJsonLine(r.output);
  auto want =
      RunCompletion(cluster_->router_address(), TextRequest("Once upon a time", 40, 0.8f, 5),
                    absl::Seconds(60), nullptr);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(got["text"], want->text);
  EXPECT_EQ(got["finish_reason"], want->finish_reason == v1::FINISH_REASON_LENGTH
                                      ? "FINISH_REASON_LENGTH"
                                      : "FINISH_REASON_STOP");
}

TEST_F(GrpcClients, KServeModelInferAndModelStreamInferFromPython) {
  auto stubs = api_testing::PythonStubs();
  ASSERT_TRUE(stubs.ok()) << stubs.status();
  auto r = api_testing::Run(absl::StrCat("PYTHONPATH='", *stubs, "' ", api_testing::Python(),
                                         " tests/api/kserve_client.py ", cluster_->router_address(),
                                         " 'Once upon a time' 24"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = LastJsonLine(r.output);
  ASSERT_TRUE(got.is_object()) << r.output;
  auto want = RunGenerate(Stories260K(), "Once upon a time", 24, 0.0f, 0);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_TRUE(got["live"].get<bool>());
  EXPECT_TRUE(got["ready"].get<bool>());
  EXPECT_TRUE(got["model_ready"].get<bool>());
  EXPECT_EQ(got["server"], "shardserve");
  EXPECT_EQ(got["outputs"], json::array({"text_output"}));
  EXPECT_EQ(got["infer_id"], "kserve-1");
  EXPECT_EQ(got["infer_text"], want->text);
  EXPECT_EQ(got["raw_text"], want->text);
  EXPECT_EQ(got["stream_text"], want->text);
  EXPECT_GT(got["stream_responses"].get<int>(), 1);
  EXPECT_EQ(got["stream_final_flags"], json::array({1, true}));
  ASSERT_EQ(got["stream_errors"].size(), 1u);
  EXPECT_NE(got["stream_errors"][0].get<std::string>().find("text_input"), std::string::npos);
  EXPECT_EQ(got["wrong_model"], "INVALID_ARGUMENT");
}

// KServe answers an unknown model as InferenceService does: INVALID_ARGUMENT, the same message
// naming the model (it said NOT_FOUND before).
TEST_F(GrpcClients, KServeUnknownModelIsInvalidArgumentLikeInferenceService) {
  auto stub = cluster_->Stub();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetModelInfoRequest request;
  request.set_model("other-model");
  v1::GetModelInfoResponse info;
  const grpc::Status want = stub->GetModelInfo(&context, request, &info);
  ASSERT_EQ(want.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << want.error_message();
  ASSERT_NE(want.error_message().find("'other-model'"), std::string::npos) << want.error_message();

  auto stubs = api_testing::PythonStubs();
  ASSERT_TRUE(stubs.ok()) << stubs.status();
  const std::string script = ::testing::TempDir() + "/kserve_unknown_model.py";
  std::ofstream(script) << R"(import json, sys
import grpc
from kserve.v2 import grpc_predict_v2_pb2 as pb
from kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[1]))
calls = {
    "ModelReady": lambda: stub.ModelReady(pb.ModelReadyRequest(name="other-model"), timeout=10),
    "ModelMetadata": lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="other-model"),
                                                timeout=10),
    "ModelInfer": lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="other-model"),
                                          timeout=10),
}
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = {"code": "OK", "details": ""}
    except grpc.RpcError as e:
        out[name] = {"code": e.code().name, "details": e.details()}
print(json.dumps(out))
)";
  auto r = api_testing::Run(absl::StrCat("PYTHONPATH='", *stubs, "' ", api_testing::Python(), " '",
                                         script, "' ", cluster_->router_address()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json got = LastJsonLine(r.output);
  ASSERT_TRUE(got.is_object()) << r.output;
  for (const char* method : {"ModelReady", "ModelMetadata", "ModelInfer"}) {
    EXPECT_EQ(got[method]["code"], "INVALID_ARGUMENT") << method << ": " << got[method];
    EXPECT_EQ(got[method]["details"], want.error_message()) << method;
  }
}

}  // namespace
}  // namespace shardserve::e2e
