// The cluster's interior against a stranger on the network, and the edges that used to fail
// badly: every worker RPC without the cluster credential, ports that are taken or out of range,
// prompts too large to tokenize, a killed or hung router's sequences, duplicate workers and a
// stage that fails every step.
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/cluster_auth.h"
#include "common/tls.h"
#include "gtest/gtest.h"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

namespace fs = std::filesystem;

std::string LogDir() {
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/test-logs/security");
  fs::create_directories(dir);
  return dir;
}

// A stub whose calls carry `secret` ("" for none) instead of the cluster's.
struct Stranger {
  explicit Stranger(const std::string& address, std::string secret = "")
      : secret(std::move(secret)),
        stub(v1::WorkerService::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {}
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    if (!secret.empty()) c->AddMetadata(kClusterSecretMetadata, secret);
    return c;
  }
  std::string secret;
  std::unique_ptr<v1::WorkerService::Stub> stub;
};

// Every WorkerService RPC from `who`, with the status each got.
std::vector<std::pair<std::string, grpc::Status>> CallEveryRpc(const Stranger& who,
                                                               const std::string& owner,
                                                               const std::string& model) {
  std::vector<std::pair<std::string, grpc::Status>> out;
  {
    v1::DescribeResponse r;
    out.emplace_back("Describe", who.stub->Describe(who.Context().get(), {}, &r));
  }
  {
    v1::LoadShardRequest q;
    q.set_model_path(model);
    q.set_layer_begin(0);
    q.set_layer_end(1);
    q.set_owner(owner);
    v1::LoadShardResponse r;
    out.emplace_back("LoadShard", who.stub->LoadShard(who.Context().get(), q, &r));
  }
  {
    v1::ConnectNextRequest q;
    q.set_next_address("127.0.0.1:1");
    q.set_owner(owner);
    v1::ConnectNextResponse r;
    out.emplace_back("ConnectNext", who.stub->ConnectNext(who.Context().get(), q, &r));
  }
  {
    v1::PrepareLinkRequest q;
    q.set_link(v1::LINK_KIND_NCCL);
    q.set_previous_address("127.0.0.1:1");
    q.set_owner(owner);
    q.set_link_version(1);
    v1::PrepareLinkResponse r;
    out.emplace_back("PrepareLink", who.stub->PrepareLink(who.Context().get(), q, &r));
  }
  {
    auto context = who.Context();
    v1::ActivationsResponse r;
    auto writer = who.stub->Activations(context.get(), &r);
    v1::ActivationsRequest m;
    m.set_step_id(1);
    writer->Write(m);
    writer->WritesDone();
    out.emplace_back("Activations", writer->Finish());
  }
  {
    auto context = who.Context();
    auto stream = who.stub->Steps(context.get());
    v1::StepsRequest q;
    q.set_owner(owner);
    q.mutable_plan()->set_step_id(1);
    stream->Write(q);
    stream->WritesDone();
    v1::StepsResponse r;
    while (stream->Read(&r)) {
    }
    out.emplace_back("Steps", stream->Finish());
  }
  {
    v1::DrainResponse r;
    out.emplace_back("Drain", who.stub->Drain(who.Context().get(), {}, &r));
  }
  {
    v1::StatsResponse r;
    out.emplace_back("Stats", who.stub->Stats(who.Context().get(), {}, &r));
  }
  return out;
}

class Secured : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster({.model = Stories260K(), .stages = 2});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() { delete cluster_; }
  static Cluster* cluster_;
};
Cluster* Secured::cluster_ = nullptr;

TEST_F(Secured, StrangersAreRefusedOnEveryWorkerRpcAndUsersAreNotDelayed) {
  auto reference = RunGenerate(Stories260K(), "Once upon a time", 24, 0.0f, 0);
  ASSERT_TRUE(reference.ok()) << reference.status();
  // The router's lease name is "<listen>/<pid>/<time>": a stranger who guesses its shape.
  const std::string leaked_looking =
      absl::StrCat(cluster_->router_address(), "/", cluster_->router().pid(), "/0");
  for (const std::string& worker : cluster_->worker_addresses()) {
    for (const auto& [rpc, status] :
         CallEveryRpc(Stranger(worker), leaked_looking, Stories260K())) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << worker << " " << rpc << ": " << status.error_message();
    }
    for (const auto& [rpc, status] : CallEveryRpc(Stranger(worker, "not-the-cluster-secret-at-all"),
                                                  leaked_looking, Stories260K())) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
          << worker << " " << rpc << ": " << status.error_message();
    }
  }
  // The pipeline is untouched: a request right after is exact and prompt.
  const absl::Time start = absl::Now();
  auto got = RunCompletion(cluster_->router_address(), TextRequest("Once upon a time", 24, 0, 0),
                           absl::Seconds(20), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->ids, reference->ids);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  for (const std::string& worker : cluster_->worker_addresses()) {
    auto stats = WorkerStats(worker);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(stats->loaded()) << worker;
  }
}

TEST_F(Secured, ACallerOfTheClusterLearnsNoLeaseOwner) {
  Stranger member(cluster_->worker_addresses()[0], ReadClusterSecret(ClusterSecretFile()).value());
  v1::LoadShardRequest q;
  q.set_model_path(Stories260K());
  q.set_layer_begin(0);
  q.set_layer_end(2);
  q.set_is_first(true);
  q.set_owner("someone-else");
  v1::LoadShardResponse r;
  grpc::Status s = member.stub->LoadShard(member.Context().get(), q, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_FALSE(absl::StrContains(s.error_message(), cluster_->router_address()))
      << s.error_message();
  EXPECT_FALSE(absl::StrContains(s.error_message(), std::to_string(cluster_->router().pid())))
      << s.error_message();
}

TEST_F(Secured, RegisterWorkerNeedsTheCredential) {
  auto stub = v1::RouterControlService::NewStub(
      grpc::CreateChannel(cluster_->router_address(), grpc::InsecureChannelCredentials()));
  for (const std::string& secret : {std::string(), std::string("wrong-secret-wrong-secret")}) {
    grpc::ClientContext context;
    if (!secret.empty()) context.AddMetadata(kClusterSecretMetadata, secret);
    v1::RegisterWorkerRequest q;
    q.set_address("127.0.0.1:1");
    v1::RegisterWorkerResponse r;
    grpc::Status s = stub->RegisterWorker(&context, q, &r);
    EXPECT_TRUE(s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
                s.error_code() == grpc::StatusCode::PERMISSION_DENIED)
        << s.error_code() << " " << s.error_message();
  }
}

TEST(Credential, WorkersAndRoutersRefuseToStartWithoutOne) {
  ClusterSecretFile();
  const std::string saved = getenv(kClusterSecretEnv);
  unsetenv(kClusterSecretEnv);
  CommandResult worker =
      RunCommand({BinPath("shardserve-worker"), "--listen", "127.0.0.1:0"}, "", absl::Seconds(20));
  CommandResult router = RunCommand({BinPath("shardserve-router"), "--listen", "127.0.0.1:0",
                                     "--workers", "127.0.0.1:1", "--model", Stories260K()},
                                    "", absl::Seconds(20));
  setenv(kClusterSecretEnv, saved.c_str(), 1);
  for (const CommandResult* r : {&worker, &router}) {
    EXPECT_EQ(r->exit_code, 2) << r->err;
    EXPECT_TRUE(absl::StrContains(r->err, "error: no cluster credential")) << r->err;
    EXPECT_TRUE(absl::StrContains(r->err, "--cluster-secret-file")) << r->err;
    EXPECT_TRUE(absl::StrContains(r->err, "--insecure-cluster")) << r->err;
  }
  // A secret too short to be one.
  const std::string weak = LogDir() + "/weak-secret";
  std::ofstream(weak) << "short\n";
  CommandResult short_secret = RunCommand(
      {BinPath("shardserve-worker"), "--listen", "127.0.0.1:0", "--cluster-secret-file", weak}, "",
      absl::Seconds(20));
  EXPECT_EQ(short_secret.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(short_secret.err, "--cluster-secret-file")) << short_secret.err;
}

TEST(Credential, InsecureClusterIsAnExplicitLoggedChoice) {
  const std::string port_file = LogDir() + "/insecure.port";
  fs::remove(port_file);
  const std::string log = LogDir() + "/insecure-worker.log";
  ClusterSecretFile();
  const std::string saved = getenv(kClusterSecretEnv);
  unsetenv(kClusterSecretEnv);
  Process worker({BinPath("shardserve-worker"), "--listen", "127.0.0.1:0", "--port-file", port_file,
                  "--insecure-cluster"},
                 log);
  setenv(kClusterSecretEnv, saved.c_str(), 1);
  const int port = WaitPortFile(port_file, worker);
  ASSERT_GT(port, 0);
  Stranger anyone(absl::StrCat("127.0.0.1:", port));
  v1::DescribeResponse r;
  EXPECT_TRUE(anyone.stub->Describe(anyone.Context().get(), {}, &r).ok());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_TRUE(absl::StrContains(text.str(), "--insecure-cluster")) << text.str();
}

TEST(ModelRoot, LoadShardOutsideTheRootRevealsNothing) {
  const std::string port_file = LogDir() + "/root.port";
  fs::remove(port_file);
  const std::string root = fs::path(Stories260K()).parent_path().string();
  Process worker({BinPath("shardserve-worker"), "--listen", "127.0.0.1:0", "--port-file", port_file,
                  "--model-root", root},
                 LogDir() + "/root-worker.log");
  const int port = WaitPortFile(port_file, worker);
  ASSERT_GT(port, 0);
  Stranger member(absl::StrCat("127.0.0.1:", port), ReadClusterSecret(ClusterSecretFile()).value());
  auto load = [&](const std::string& path) {
    v1::LoadShardRequest q;
    q.set_model_path(path);
    q.set_layer_begin(0);
    q.set_layer_end(2);
    q.set_is_first(true);
    q.set_kv_block_size(16);
    q.set_kv_num_blocks(64);
    q.set_max_step_tokens(64);
    v1::LoadShardResponse r;
    return member.stub->LoadShard(member.Context().get(), q, &r);
  };
  // An existing folder, a missing one, and an escape through "..": the same answer.
  const grpc::Status existing = load("/etc");
  const grpc::Status missing = load("/no/such/folder");
  const grpc::Status escape = load(Stories260K() + "/../../../../etc");
  for (const grpc::Status* s : {&existing, &missing, &escape}) {
    EXPECT_EQ(s->error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s->error_message();
    EXPECT_TRUE(absl::StrContains(s->error_message(), "--model-root")) << s->error_message();
  }
  EXPECT_EQ(existing.error_message(), missing.error_message());
  EXPECT_EQ(escape.error_message(), missing.error_message());
  // Inside the root it loads.
  const grpc::Status inside = load(Stories260K());
  EXPECT_TRUE(inside.ok()) << inside.error_message();
}

TEST(Ports, ASecondProcessOnATakenPortExitsTwoNamingThePort) {
  const std::string port_file = LogDir() + "/taken.port";
  fs::remove(port_file);
  const int metrics_port = FreePort();
  Process first({BinPath("shardserve-worker"), "--listen", "127.0.0.1:0", "--port-file", port_file,
                 "--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port)},
                LogDir() + "/taken-first.log");
  const int port = WaitPortFile(port_file, first);
  ASSERT_GT(port, 0);
  const std::string taken = absl::StrCat("127.0.0.1:", port);
  const std::string taken_metrics = absl::StrCat("127.0.0.1:", metrics_port);
  struct Case {
    std::vector<std::string> args;
    std::string flag;
    int port;
  };
  const std::vector<Case> cases = {
      {{BinPath("shardserve-worker"), "--listen", taken}, "--listen", port},
      {{BinPath("shardserve-worker"), "--listen", "127.0.0.1:0", "--metrics-listen", taken_metrics},
       "--metrics-listen",
       metrics_port},
      {{BinPath("shardserve-router"), "--listen", taken, "--workers", "127.0.0.1:1", "--model",
        Stories260K()},
       "--listen",
       port},
      {{BinPath("shardserve-router"), "--listen", "127.0.0.1:0", "--http-listen", taken,
        "--workers", "127.0.0.1:1", "--model", Stories260K()},
       "--http-listen",
       port},
  };
  for (const Case& c : cases) {
    CommandResult r = RunCommand(c.args, "", absl::Seconds(30));
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << " " << c.flag << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.flag)) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, absl::StrCat("port ", c.port))) << r.err;
  }
  EXPECT_TRUE(first.alive());
}

TEST(Ports, OutOfRangePortsAreRejected) {
  for (const char* bad : {"127.0.0.1:99999", "127.0.0.1:70000", "127.0.0.1:-1"}) {
    CommandResult worker =
        RunCommand({BinPath("shardserve-worker"), "--listen", bad}, "", absl::Seconds(20));
    EXPECT_EQ(worker.exit_code, 2) << worker.err;
    EXPECT_TRUE(absl::StrContains(worker.err, "--listen")) << worker.err;
    CommandResult router = RunCommand({BinPath("shardserve-router"), "--listen", bad, "--workers",
                                       "127.0.0.1:1", "--model", Stories260K()},
                                      "", absl::Seconds(20));
    EXPECT_EQ(router.exit_code, 2) << router.err;
    EXPECT_TRUE(absl::StrContains(router.err, "--listen")) << router.err;
  }
}

TEST(Workers, ADuplicateAddressIsRefusedAtStart) {
  CommandResult r =
      RunCommand({BinPath("shardserve-router"), "--listen", "127.0.0.1:0", "--workers",
                  "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7101", "--model", Stories260K()},
                 "", absl::Seconds(20));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "127.0.0.1:7101 is listed twice")) << r.err;
}

int64_t PeakRssKb(pid_t pid, const char* field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, field)) {
      int64_t kb = 0;
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits += c;
      }
      if (absl::SimpleAtoi(digits, &kb)) return kb;
    }
  }
  return -1;
}

TEST(Bounded, HugePromptsAreRefusedBeforeTokenizing) {
  const int http_port = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http_port)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const pid_t router = cluster.router().pid();
  const int64_t baseline_kb = PeakRssKb(router, "VmRSS:");
  ASSERT_GT(baseline_kb, 0);

  // Three maximal invalid requests at once: 50 MB prompts over HTTP.
  const std::string prompt(50 << 20, 'a');
  const std::string body =
      absl::StrCat(R"({"model":"stories260K","max_tokens":4,"prompt":")", prompt, R"("})");
  const absl::Time start = absl::Now();
  std::vector<std::future<int>> posts;
  for (int i = 0; i < 3; ++i) {
    posts.push_back(std::async(std::launch::async, [&] {
      httplib::Client client("127.0.0.1", http_port);
      client.set_read_timeout(30, 0);
      client.set_write_timeout(30, 0);
      auto res = client.Post("/v1/completions", body, "application/json");
      return res ? res->status : -1;
    }));
  }
  for (auto& p : posts) {
    const int status = p.get();
    // Refused: 413 (body past the limit), or -1 when the server closed the connection while the
    // client was still sending the body it will not read.
    EXPECT_TRUE(status == 413 || status == 400 || status == -1) << status;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  // Over gRPC: a 12 MB prompt and a 10 MB Tokenize are refused, not tokenized.
  auto stub = cluster.Stub();
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    auto reader = stub->Generate(&context, TextRequest(std::string(12 << 20, 'b'), 4, 0, 0));
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
    }
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), "refused before tokenizing"))
        << s.error_message();
  }
  {
    grpc::ClientContext context;
    v1::TokenizeRequest q;
    q.set_text(std::string(10 << 20, 'c'));
    v1::TokenizeResponse r;
    grpc::Status s = stub->Tokenize(&context, q, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_EQ(r.ids_size(), 0);
  }
  const int64_t peak_kb = PeakRssKb(router, "VmHWM:");
  std::printf("router RSS: baseline %lld kB, peak %lld kB\n", static_cast<long long>(baseline_kb),
              static_cast<long long>(peak_kb));
  EXPECT_LT(peak_kb, 3 * baseline_kb + 3 * 64 * 1024);
  // Still serving.
  auto got = RunCompletion(cluster.router_address(), TextRequest("Once", 4, 0, 0),
                           absl::Seconds(20), nullptr);
  EXPECT_TRUE(got.ok()) << got.status();
}

// Starts `n` long generations and waits until the worker holds all of them.
std::vector<std::thread> HoldSequences(Cluster& cluster, int n, std::atomic<bool>* stop) {
  std::vector<std::thread> streams;
  for (int i = 0; i < n; ++i) {
    streams.emplace_back([&cluster, stop, i] {
      auto stub = cluster.Stub();
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      v1::GenerateRequest q = TextRequest(absl::StrCat("Once upon a time ", i), 450, 0.0f, 0);
      q.set_ignore_eos(true);
      auto reader = stub->Generate(&context, q);
      v1::GenerateResponse resp;
      while (!*stop && reader->Read(&resp)) {
      }
      context.TryCancel();
    });
  }
  return streams;
}

void ExpectReleasedWithin(const std::string& worker, absl::Duration within) {
  const absl::Time give_up = absl::Now() + within;
  int64_t live = -1, used = -1;
  while (absl::Now() < give_up) {
    auto stats = WorkerStats(worker);
    ASSERT_TRUE(stats.ok()) << stats.status();
    live = stats->live_sequences();
    used = stats->kv_blocks_used();
    if (live == 0 && used == 0) return;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ADD_FAILURE() << worker << " still holds " << live << " sequences, " << used << " blocks";
}

bool WaitHolding(const std::string& worker, int n) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up) {
    auto stats = WorkerStats(worker);
    if (stats.ok() && stats->live_sequences() >= n) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

class LeaseEnd : public ::testing::TestWithParam<int> {};

// SIGKILL: the Steps stream breaks. SIGSTOP: the stream stays open, the lease runs out.
TEST_P(LeaseEnd, AGoneRoutersSequencesAreFreedWithinTheLeaseTtl) {
  const int sig = GetParam();
  Cluster cluster({.model = Stories260K(),
                   .worker_args = {"--lease-ttl-s", "2"},
                   .router_args = {"--canary-interval-s", "0.5"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const std::string worker = cluster.worker_addresses()[0];
  std::atomic<bool> stop{false};
  std::vector<std::thread> streams = HoldSequences(cluster, 3, &stop);
  ASSERT_TRUE(WaitHolding(worker, 3));
  cluster.router().Kill(sig);
  // Within the TTL (2 s) of the last step, plus the reaper's period and the poll.
  ExpectReleasedWithin(worker, absl::Seconds(3));
  stop = true;
  cluster.router().Kill(SIGKILL);
  for (auto& t : streams) t.join();
}

INSTANTIATE_TEST_SUITE_P(KillAndHang, LeaseEnd, ::testing::Values(SIGKILL, SIGSTOP),
                         [](const auto& info) {
                           return std::string(info.param == SIGKILL ? "Killed" : "Hung");
                         });

TEST(RetryBudget, AStageThatFailsEveryStepEndsTheRequestWithUnavailable) {
  // Stage 0's sends fail from the first: every step of the pipeline fails, every time it is
  // set up again.
  const int http_port = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .worker0_args = {"--fault-fail-after-sends", "0"},
                   .router_args = {"--failover-wait-s", "120", "--canary-interval-s", "0",
                                   "--http-listen", absl::StrCat("127.0.0.1:", http_port)}});
  // It becomes SERVING (set-up needs no step), then fails at the first step.
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const absl::Time start = absl::Now();
  auto stub = cluster.Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(100)));
  auto reader = stub->Generate(&context, TextRequest("Once upon a time", 8, 0.0f, 0));
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
  }
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "stage 0")) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "failovers per request")) << s.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));
  // The failing stage's status code reaches /metrics.
  const auto metrics = api_testing::HttpGet(http_port, "/metrics");
  EXPECT_GE(
      api_testing::MetricValue(
          metrics.body, R"(shardserve_pipeline_failures_total{pipeline="0",code="UNAVAILABLE"})"),
      4)
      << metrics.body;
}

}  // namespace
}  // namespace shardserve::e2e

namespace shardserve::e2e {
namespace {

// A worker that cannot load its shard (here: the model lies outside its --model-root) is retried
// with backoff, and the router logs the reason once, not once per try.
TEST(LoadRetries, ARouterLogsAnUnchangedLoadFailureOnce) {
  const int metrics_port = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 1,
                   .worker_args = {"--model-root", LogDir(), "--metrics-listen",
                                   absl::StrCat("127.0.0.1:", metrics_port)}});
  auto failures = [&] {
    const auto r = api_testing::HttpGet(metrics_port, "/metrics");
    return r.status == 200
               ? api_testing::MetricValue(r.body, "shardserve_worker_shard_load_failures_total")
               : -1.0;
  };
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (failures() < 4 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(100));
  ASSERT_GE(failures(), 4) << "the router did not retry the load";
  std::ifstream in(cluster.router_log());
  std::stringstream text;
  text << in.rdbuf();
  const std::string log = text.str();
  // (The router may first log that the worker is not up yet: another reason.)
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    lines += absl::StrContains(line, "not ready: ") &&
             absl::StrContains(line, "cannot load its shard: model_path: not inside");
  }
  EXPECT_EQ(lines, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "logged again only when the reason changes")) << log;
  EXPECT_TRUE(cluster.router().alive());
}

}  // namespace
}  // namespace shardserve::e2e
