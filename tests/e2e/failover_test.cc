// Failover against real clusters: SIGKILL a worker mid-generation and every stream continues on
// a healthy pipeline (or on a replacement worker) with exactly the no-fault output; with nothing
// to move to, requests end with UNAVAILABLE naming the failed worker; SIGTERM drains routers and
// workers; canary steps find hung and draining stages; and a chaos run that kills and restarts
// random workers under 32 concurrent streams.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using api_testing::HttpGet;
using api_testing::MetricValue;

struct Job {
  std::string prompt;
  float temperature;
  uint64_t seed;
};

const std::vector<Job> kJobs = {
    {"Once upon a time", 0, 0},
    {"The little dog", 0.8f, 7},
    {"Lily and Tom went to the park.", 0, 0},
    {"One day, a girl named", 0.8f, 42},
    {"The sun was hot and", 0, 0},
    {"Tim had a red car", 0.8f, 3},
    {"There was a big tree", 0, 0},
    {"Mom said to Ben", 0.8f, 11},
};
constexpr int kMaxTokens = 200;

std::vector<Reference> References() {
  std::vector<Reference> refs;
  for (const Job& j : kJobs) {
    auto r = RunGenerate(Stories260K(), j.prompt, kMaxTokens, j.temperature, j.seed);
    EXPECT_TRUE(r.ok()) << r.status();
    refs.push_back(r.ok() ? *r : Reference{});
  }
  return refs;
}

double Metric(int http, const std::string& sample) {
  auto r = HttpGet(http, "/metrics");
  return r.status == 200 ? MetricValue(r.body, sample) : -1;
}

double Sum(int http, const std::string& name, int pipelines) {
  double total = 0;
  for (int p = 0; p < pipelines; ++p) {
    total += std::max(0.0, Metric(http, absl::StrCat(name, "{pipeline=\"", p, "\"}")));
  }
  return total;
}

// Polls `done` every few milliseconds until it holds or `timeout` has passed; whether it held.
template <typename Condition>
bool WaitUntil(Condition done, absl::Duration timeout,
               absl::Duration interval = absl::Milliseconds(20)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(interval);
  }
  return true;
}

// Waits until the router has streamed at least `tokens` tokens.
void WaitForTokens(int http, double tokens) {
  if (!WaitUntil([&] { return Metric(http, "shardserve_generation_tokens_total") >= tokens; },
                 absl::Seconds(30), absl::Milliseconds(2))) {
    ADD_FAILURE() << "no tokens streamed";
  }
}

// One Generate stream read in its own thread, counting the tokens received so far, so that a
// test can act once the stream is under way (and not after a guessed delay). The status as
// RunCompletion reports it.
class Stream {
 public:
  Stream(const Cluster& cluster, v1::GenerateRequest request, absl::Duration deadline)
      : stub_(cluster.Stub()) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    thread_ = std::thread([this, request = std::move(request)] {
      auto reader = stub_->Generate(&context_, request);
      CompletionResult result;
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
        result.ids.insert(result.ids.end(), response.token_ids().begin(),
                          response.token_ids().end());
        result.text += response.text();
        tokens_ += response.token_ids_size();
      }
      const grpc::Status s = reader->Finish();
      if (s.ok()) {
        result_ = std::move(result);
      } else {
        result_ = absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
      }
    });
  }
  ~Stream() { Finish(); }

  // Whether at least `n` tokens arrived within `timeout`.
  bool WaitForTokens(int n, absl::Duration timeout) {
    return WaitUntil([&] { return tokens_ >= n; }, timeout, absl::Milliseconds(1));
  }
  // Waits for the stream to end.
  const absl::StatusOr<CompletionResult>& Finish() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  std::unique_ptr<v1::InferenceService::Stub> stub_;
  grpc::ClientContext context_;
  std::atomic<int> tokens_{0};
  absl::StatusOr<CompletionResult> result_ = absl::UnknownError("not run");
  std::thread thread_;
};

// Every job `copies` times at once against `cluster`, each in its own thread; Finish() joins
// them and checks each output against `refs` (ids and text).
class JobRun {
 public:
  JobRun(const Cluster& cluster, int copies = 1)
      : got_(kJobs.size() * copies, absl::UnknownError("not run")) {
    for (size_t i = 0; i < got_.size(); ++i) {
      threads_.emplace_back([this, &cluster, i] {
        const Job& j = kJobs[i % kJobs.size()];
        got_[i] = RunCompletion(cluster.router_address(),
                                TextRequest(j.prompt, kMaxTokens, j.temperature, j.seed),
                                absl::Seconds(60), nullptr);
      });
    }
  }
  ~JobRun() { Join(); }

  void Finish(const std::vector<Reference>& refs) {
    Join();
    for (size_t i = 0; i < got_.size(); ++i) {
      const Job& j = kJobs[i % kJobs.size()];
      ASSERT_TRUE(got_[i].ok()) << j.prompt << ": " << got_[i].status();
      EXPECT_EQ(got_[i]->ids, refs[i % kJobs.size()].ids) << j.prompt;
      EXPECT_EQ(got_[i]->text, refs[i % kJobs.size()].text) << j.prompt;
    }
  }

 private:
  void Join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  std::vector<absl::StatusOr<CompletionResult>> got_;
  std::vector<std::thread> threads_;
};

// A worker on `address` that announces itself to the cluster's router as a spare.
Process StartSpare(const Cluster& cluster, const std::string& address, const std::string& log) {
  return Process({BinPath("shardserve-worker"), "--listen", address, "--threads", "1", "--router",
                  cluster.router_address()},
                 absl::StrCat(SHARDSERVE_TEST_LOGS, "/", log));
}

v1::GetModelInfoResponse ModelInfo(const Cluster& cluster) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::GetModelInfoResponse r;
  EXPECT_TRUE(cluster.Stub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &r).ok());
  return r;
}

TEST(Failover, KilledWorkersStreamsContinueOnTheOtherReplica) {
  const std::vector<Reference> refs = References();
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .replicas = 2,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  // Two CPU stages: each pipeline's one hop is a gRPC link.
  EXPECT_EQ(Metric(http, "shardserve_pipeline_links{pipeline=\"0\",link=\"grpc\"}"), 1);
  EXPECT_EQ(Metric(http, "shardserve_pipeline_links{pipeline=\"1\",link=\"grpc\"}"), 1);
  JobRun run(cluster, /*copies=*/2);
  WaitForTokens(http, 100);
  // Worker 0 is stage 0 of pipeline 0.
  cluster.KillWorker(0);
  run.Finish(refs);
  EXPECT_EQ(Metric(http, "shardserve_failovers_total{pipeline=\"0\"}"), 1);
  EXPECT_GT(Metric(http, "shardserve_sequences_resumed_total{pipeline=\"1\"}"), 0)
      << "no stream was on the killed pipeline";
}

// A constrained stream (a JSON schema, sampled) that fails over mid-way is exactly the no-fault
// one: the matcher and its next mask travel with the token log, and the re-prefill samples the
// next token under the same mask and the same (seed, position) draw.
TEST(Failover, ConstrainedStreamsResumeExactly) {
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .replicas = 2,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto request = [](size_t i) {
    v1::GenerateRequest r = TextRequest(kJobs[i].prompt, kMaxTokens, 0.8f, 100 + i);
    r.mutable_response_format()->mutable_json_schema()->set_schema(
        R"({"type":"object","properties":{"title":{"type":"string"},"pages":{"type":"integer"},)"
        R"("tags":{"type":"array","items":{"type":"string"}}},"required":["title","tags"]})");
    return r;
  };
  std::vector<CompletionResult> refs;
  double streamed = 0;
  for (size_t i = 0; i < kJobs.size(); ++i) {
    auto r = RunCompletion(cluster.router_address(), request(i), absl::Seconds(60), nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    streamed += r->ids.size();
    refs.push_back(*r);
  }
  std::vector<std::unique_ptr<Stream>> streams;
  for (size_t i = 0; i < kJobs.size(); ++i) {
    streams.push_back(std::make_unique<Stream>(cluster, request(i), absl::Seconds(60)));
  }
  WaitForTokens(http, streamed + 60);
  cluster.KillWorker(0);  // stage 0 of pipeline 0
  for (size_t i = 0; i < kJobs.size(); ++i) {
    const auto& got = streams[i]->Finish();
    ASSERT_TRUE(got.ok()) << kJobs[i].prompt << ": " << got.status();
    EXPECT_EQ(got->ids, refs[i].ids) << kJobs[i].prompt;
    EXPECT_EQ(got->text, refs[i].text) << kJobs[i].prompt;
    EXPECT_EQ(got->text.front(), '{') << got->text;
  }
  EXPECT_EQ(Metric(http, "shardserve_failovers_total{pipeline=\"0\"}"), 1);
  EXPECT_GT(Metric(http, "shardserve_sequences_resumed_total{pipeline=\"1\"}"), 0)
      << "no stream was on the killed pipeline";
}

// A device fault on stage 0 of pipeline 0 (a sticky CUDA error, injected with
// --fault-device-after-steps; the CUDA backend reports a real one the same way): the worker stays
// up but stops serving, says why in its Stats and in the router's cluster view, the streams on
// its pipeline finish on the other replica with exactly the no-fault output, and an announced
// spare takes its stage.
TEST(Failover, DeviceFaultFailsThePipelineOverAndTheWorkerStopsServing) {
  const std::vector<Reference> refs = References();
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .replicas = 2,
                   .worker0_args = {"--fault-device-after-steps", "40"},
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  JobRun run(cluster, /*copies=*/2);
  run.Finish(refs);
  EXPECT_EQ(Metric(http, "shardserve_failovers_total{pipeline=\"0\"}"), 1);
  EXPECT_GT(Metric(http, "shardserve_sequences_resumed_total{pipeline=\"1\"}"), 0)
      << "no stream was on the failed pipeline";
  EXPECT_TRUE(cluster.worker(0).alive());
  auto stats = WorkerStats(cluster.worker_addresses()[0]);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(absl::StrContains(stats->device_error(), "injected device fault"))
      << stats->device_error();
  // The router's cluster view shows the stage and the failover with the fault.
  std::string view;
  EXPECT_TRUE(WaitUntil(
      [&] {
        view = HttpGet(http, "/v1/cluster").body;
        return absl::StrContains(view, "\"health\":\"device failed: injected device fault");
      },
      absl::Seconds(30), absl::Milliseconds(100)))
      << view;
  EXPECT_TRUE(absl::StrContains(view, "wait for it: worker")) << view;
  EXPECT_TRUE(absl::StrContains(view, "device failed: injected device fault at step 40")) << view;

  // LoadShard on the failed worker is refused, so a spare announced to the router takes its
  // stage.
  const std::string spare_address = absl::StrCat("127.0.0.1:", FreePort());
  Process spare = StartSpare(cluster, spare_address, "device-fault-spare.log");
  auto info = [&] { return ModelInfo(cluster); };
  EXPECT_TRUE(WaitUntil(
      [&] {
        const v1::GetModelInfoResponse r = info();
        return r.pipelines_size() == 2 && r.pipelines(0).stages_size() == 2 &&
               r.pipelines(0).stages(0).worker_address() == spare_address;
      },
      absl::Seconds(30), absl::Milliseconds(100)));
  EXPECT_EQ(info().spare_workers_size(), 0);
  auto again =
      RunCompletion(cluster.router_address(), TextRequest(kJobs[0].prompt, kMaxTokens, 0, 0),
                    absl::Seconds(60), nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ids, refs[0].ids);
}

TEST(Failover, ReplacementWorkerTakesOverTheStage) {
  const std::vector<Reference> refs = References();
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  JobRun run(cluster);
  WaitForTokens(http, 100);
  cluster.KillWorker(1);
  // The router notices the dead stage and parks the pipeline's sequences for a replacement.
  WaitUntil([&] { return Metric(http, "shardserve_sequences_parked{pipeline=\"0\"}") > 0; },
            absl::Seconds(10));
  EXPECT_GT(Metric(http, "shardserve_sequences_parked{pipeline=\"0\"}"), 0);
  cluster.StartWorker(1);
  run.Finish(refs);
  EXPECT_EQ(Metric(http, "shardserve_sequences_parked{pipeline=\"0\"}"), 0);
}

// A spare worker announces itself with --router; when a stage's worker dies and cannot be
// reached, the spare is given that stage's shard and the waiting streams finish on it exactly.
TEST(Failover, AnnouncedSpareWorkerReplacesADeadStage) {
  const std::vector<Reference> refs = References();
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .worker_args = {"--fault-send-delay-ms", "2"},
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const std::string spare_address = absl::StrCat("127.0.0.1:", FreePort());
  Process spare = StartSpare(cluster, spare_address, "spare-worker.log");
  auto info = [&] { return ModelInfo(cluster); };
  WaitUntil([&] { return info().spare_workers_size() > 0; }, absl::Seconds(5),
            absl::Milliseconds(25));
  ASSERT_EQ(info().spare_workers_size(), 1);
  EXPECT_EQ(info().spare_workers(0), spare_address);

  JobRun run(cluster);
  WaitForTokens(http, 50);
  const std::string dead = cluster.worker_addresses()[1];
  cluster.KillWorker(1);
  run.Finish(refs);
  const v1::GetModelInfoResponse after = info();
  ASSERT_EQ(after.pipelines_size(), 1);
  ASSERT_EQ(after.pipelines(0).stages_size(), 2);
  EXPECT_EQ(after.pipelines(0).stages(1).worker_address(), spare_address);
  EXPECT_EQ(after.spare_workers_size(), 0);
}

// Starts a long greedy request with `deadline`, SIGKILLs stage 1's worker (the only pipeline's)
// and returns how the request ended.
struct KilledStage {
  absl::Status status;
  std::string dead;  // the killed worker's address
  absl::Duration elapsed;
};
KilledStage KillStageDuringLongRequest(Cluster& cluster, absl::Duration deadline) {
  KilledStage k;
  const absl::Time start = absl::Now();
  v1::GenerateRequest r = TextRequest("Once upon a time", 400, 0, 0);
  r.set_ignore_eos(true);
  Stream stream(cluster, r, deadline);
  // Kill once the request is generating: its first token has come back through both stages.
  EXPECT_TRUE(stream.WaitForTokens(1, deadline)) << "the request produced no token";
  k.dead = cluster.worker_addresses()[1];
  cluster.KillWorker(1);
  k.status = stream.Finish().status();
  k.elapsed = absl::Now() - start;
  return k;
}

TEST(Failover, NoPipelineLeftMeansUnavailableNamingTheWorker) {
  Cluster cluster({.model = Stories260K(), .stages = 2, .router_args = {"--failover-wait-s", "1"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const KilledStage k = KillStageDuringLongRequest(cluster, absl::Seconds(60));
  EXPECT_EQ(k.status.code(), absl::StatusCode::kUnavailable) << k.status;
  EXPECT_NE(k.status.message().find(k.dead), std::string::npos) << k.status;
  EXPECT_NE(k.status.message().find("--failover-wait-s"), std::string::npos) << k.status;
  EXPECT_LT(k.elapsed, absl::Seconds(10));
}

// SIGTERM on the router: new requests get UNAVAILABLE and health says NOT_SERVING at once, the
// streams it has finish exactly, and it exits 0.
TEST(Drain, RouterFinishesItsStreamsRefusesNewOnesAndExitsZero) {
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .worker_args = {"--fault-send-delay-ms", "5"},
                   .router_args = {"--drain-grace-s", "60"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto ref = RunGenerate(Stories260K(), "Once upon a time", kMaxTokens, 0, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  Stream stream(cluster, TextRequest("Once upon a time", kMaxTokens, 0, 0), absl::Seconds(60));
  // SIGTERM while the stream is under way (it has tokens, and ~1 s of its 200 still to come).
  ASSERT_TRUE(stream.WaitForTokens(5, absl::Seconds(30))) << "the stream did not start";
  cluster.router().Kill(SIGTERM);
  // Draining has begun once health says NOT_SERVING (the router acts on SIGTERM asynchronously).
  WaitUntil([&] { return !HealthServing(cluster.router_address(), absl::Milliseconds(500)); },
            absl::Seconds(5));
  auto refused = RunCompletion(cluster.router_address(), TextRequest("Hello", 4, 0, 0),
                               absl::Seconds(5), nullptr);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_NE(refused.status().message().find("draining"), std::string::npos) << refused.status();
  EXPECT_FALSE(HealthServing(cluster.router_address(), absl::Seconds(1)));
  const absl::StatusOr<CompletionResult>& got = stream.Finish();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->ids, ref->ids);
  EXPECT_EQ(cluster.router().Wait(absl::Seconds(10)), 0);
}

// SIGTERM on a worker under load: its pipeline's sequences move to the other replica and finish
// exactly, and the worker exits 0 once the router has let go of it.
TEST(Drain, WorkerHandsItsSequencesOverThenExitsZero) {
  const std::vector<Reference> refs = References();
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .replicas = 2,
                   .worker_args = {"--fault-send-delay-ms", "2"},
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  JobRun run(cluster);
  WaitForTokens(http, 50);
  cluster.worker(0).Kill(SIGTERM);
  run.Finish(refs);
  EXPECT_GT(Metric(http, "shardserve_sequences_resumed_total{pipeline=\"1\"}"), 0);
  EXPECT_EQ(cluster.worker(0).Wait(absl::Seconds(10)), 0);
}

// An idle pipeline is probed by canary steps: a draining worker is let go within seconds (the
// canary is refused and the router closes its streams), and a hung (SIGSTOPped) stage turns
// the router's health NOT_SERVING, then SERVING again once it runs.
TEST(Health, CanaryStepsFindDrainingAndHungStages) {
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .router_args = {"--canary-interval-s", "0.2", "--step-timeout-s", "1"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  cluster.worker(1).Kill(SIGSTOP);
  const absl::Time stopped = absl::Now();
  const bool not_serving =
      WaitUntil([&] { return !HealthServing(cluster.router_address(), absl::Milliseconds(500)); },
                absl::Seconds(10), absl::Milliseconds(50));
  EXPECT_TRUE(not_serving) << "a hung stage went unnoticed";
  EXPECT_LT(absl::Now() - stopped, absl::Seconds(4));
  cluster.worker(1).Kill(SIGCONT);
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(30)).ok());
  auto got = RunCompletion(cluster.router_address(), TextRequest("Hello", 8, 0, 0),
                           absl::Seconds(30), nullptr);
  EXPECT_TRUE(got.ok()) << got.status();

  // Idle, then SIGTERM: the worker is let go and exits 0 long before its 30 s grace period.
  cluster.worker(0).Kill(SIGTERM);
  EXPECT_EQ(cluster.worker(0).Wait(absl::Seconds(5)), 0);
}

// With a long --failover-wait-s, a request whose pipeline is gone waits until its own deadline,
// then ends with UNAVAILABLE naming the missing worker (not a bare DEADLINE_EXCEEDED).
TEST(Failover, NoPipelineBeforeTheDeadlineIsUnavailableNamingTheWorker) {
  Cluster cluster(
      {.model = Stories260K(), .stages = 2, .router_args = {"--failover-wait-s", "120"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const KilledStage k = KillStageDuringLongRequest(cluster, absl::Seconds(3));
  EXPECT_EQ(k.status.code(), absl::StatusCode::kUnavailable) << k.status;
  EXPECT_NE(k.status.message().find(k.dead), std::string::npos) << k.status;
  EXPECT_NE(k.status.message().find("deadline"), std::string::npos) << k.status;
  EXPECT_LT(k.elapsed, absl::Seconds(6));
}

int64_t RssKb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

// 2 replicas x 2 stages, 32 client threads sending back-to-back requests; three rounds of
// SIGKILL on a random worker and its restart. Every request finishes before its deadline with
// exactly the no-fault output, and the router's memory does not grow round over round.
TEST(Chaos, RandomWorkerKillsUnderThirtyTwoStreams) {
  const std::vector<Reference> refs = References();
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .replicas = 2,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  constexpr absl::Duration kDeadline = absl::Seconds(60);
  std::atomic<bool> stop{false};
  std::atomic<int> completed{0}, wrong{0}, failed{0}, late{0};
  std::mutex mu;
  std::vector<std::string> problems;
  std::vector<std::thread> clients;
  for (int c = 0; c < 32; ++c) {
    clients.emplace_back([&, c] {
      for (int n = 0; !stop; ++n) {
        const size_t k = (c + n) % kJobs.size();
        const Job& j = kJobs[k];
        const absl::Time start = absl::Now();
        auto got = RunCompletion(cluster.router_address(),
                                 TextRequest(j.prompt, kMaxTokens, j.temperature, j.seed),
                                 kDeadline, nullptr);
        if (absl::Now() - start > kDeadline + absl::Seconds(1)) ++late;
        std::lock_guard<std::mutex> lock(mu);
        if (!got.ok()) {
          ++failed;
          if (problems.size() < 5) problems.push_back(std::string(got.status().message()));
        } else if (got->ids != refs[k].ids) {
          ++wrong;
          if (problems.size() < 5) problems.push_back("wrong output for '" + j.prompt + "'");
        } else {
          ++completed;
        }
      }
    });
  }
  // Requests that have ended, however they ended.
  auto ended = [&] { return completed + wrong + failed; };
  // Lets the clients run until `n` more requests have ended (the cluster is carrying the load
  // before the next kill), at most kDeadline.
  auto run_requests = [&](int n) {
    const int target = ended() + n;
    EXPECT_TRUE(WaitUntil([&] { return ended() >= target; }, kDeadline))
        << ended() << " requests ended, waited for " << target;
  };
  std::mt19937 rng(2024);
  std::vector<int64_t> rss;
  for (int round = 0; round < 3; ++round) {
    run_requests(16);
    const int victim = static_cast<int>(rng() % 4);
    cluster.KillWorker(victim);
    // Restart only once the router has noticed the kill and failed the pipeline over.
    EXPECT_TRUE(WaitUntil([&] { return Sum(http, "shardserve_failovers_total", 2) >= round + 1; },
                          absl::Seconds(30)))
        << "round " << round << ": the router did not fail over from worker " << victim;
    cluster.StartWorker(victim);
    ASSERT_TRUE(cluster.WaitServing(absl::Seconds(30)).ok());
    rss.push_back(RssKb(cluster.router().pid()));
  }
  // Then on the restored cluster: at least 16 more, and at least 65 in all.
  run_requests(std::max(16, 65 - ended()));
  stop = true;
  for (auto& t : clients) t.join();
  for (const std::string& p : problems) ADD_FAILURE() << p;
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(late, 0);
  EXPECT_GT(completed, 64);
  EXPECT_EQ(Sum(http, "shardserve_failovers_total", 2), 3);
  EXPECT_GT(Sum(http, "shardserve_sequences_resumed_total", 2) +
                Sum(http, "shardserve_sequences_parked", 2),
            0);
  ASSERT_EQ(rss.size(), 3u);
  EXPECT_LT(rss[2], rss[0] + 32 * 1024)
      << "router RSS grew from " << rss[0] << " kB to " << rss[2] << " kB";
}

}  // namespace
}  // namespace shardserve::e2e
