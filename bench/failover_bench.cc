// Failover benchmark: the time from SIGKILL of the worker serving a stream to the stream's next
// token, resumed on the other pipeline replica. A local cluster of 2 replicas x 1 stage; for each
// of --kills rounds: start a long greedy stream, wait for --warm-tokens tokens, kill the worker of
// the pipeline running it, time the gap to the next token, check that the whole stream equals a
// no-fault run, then restart the worker and wait until both pipelines serve again. Prints p50 and
// max of the gap, with the stream's normal inter-token gap for scale.
//
//   build/bin/failover_bench [--model DIR] [--kills 20] [--max-tokens 300] [--warm-tokens 20]
//
// Run from the source tree root (it uses build/bin's processes and ../shared).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

double Metric(int http, const std::string& sample) {
  auto r = api_testing::HttpGet(http, "/metrics");
  return r.status == 200 ? api_testing::MetricValue(r.body, sample) : -1;
}

int Main(int argc, char** argv) {
  std::string model = Stories260K();
  int kills = 20, max_tokens = 300, warm_tokens = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--model") {
      model = value;
    } else if (flag == "--kills") {
      ok = absl::SimpleAtoi(value, &kills) && kills > 0;
    } else if (flag == "--max-tokens") {
      ok = absl::SimpleAtoi(value, &max_tokens) && max_tokens > 0;
    } else if (flag == "--warm-tokens") {
      ok = absl::SimpleAtoi(value, &warm_tokens) && warm_tokens > 0;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "error: bad flag %s %s (see the header of bench/failover_bench.cc)\n",
                   flag.c_str(), value.c_str());
      return 2;
    }
  }
  const int http = FreePort();
  Cluster cluster({.model = model,
                   .stages = 1,
                   .replicas = 2,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  if (!cluster.WaitServing(absl::Seconds(120)).ok()) {
    std::fprintf(stderr, "error: the cluster did not come up\n");
    return 1;
  }
  v1::GenerateRequest request = TextRequest("Once upon a time", max_tokens, 0, 0);
  request.set_ignore_eos(true);
  auto reference = RunCompletion(cluster.router_address(), request, absl::Seconds(120), nullptr);
  if (!reference.ok()) {
    std::fprintf(stderr, "error: no-fault run: %s\n", reference.status().ToString().c_str());
    return 1;
  }
  std::vector<double> gaps, itl;
  int mismatches = 0;
  for (int k = 0; k < kills; ++k) {
    // Both pipelines serving before each round.
    for (int i = 0; i < 600; ++i) {
      if (Metric(http, "shardserve_pipeline_ready{pipeline=\"0\"}") == 1 &&
          Metric(http, "shardserve_pipeline_ready{pipeline=\"1\"}") == 1) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    auto stub = cluster.Stub();
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    auto reader = stub->Generate(&context, request);
    v1::GenerateResponse resp;
    std::vector<int32_t> ids;
    Clock::time_point last = Clock::now(), killed{};
    int victim = -1;
    double gap = -1;
    while (reader->Read(&resp)) {
      const Clock::time_point now = Clock::now();
      if (resp.token_ids_size() == 0) continue;
      if (victim >= 0 && gap < 0) {
        gap = Ms(now - killed);
      } else if (victim < 0 && !ids.empty()) {
        itl.push_back(Ms(now - last) / resp.token_ids_size());
      }
      last = now;
      ids.insert(ids.end(), resp.token_ids().begin(), resp.token_ids().end());
      if (victim < 0 && static_cast<int>(ids.size()) >= warm_tokens) {
        victim = Metric(http, "shardserve_num_requests_running{pipeline=\"0\"}") > 0 ? 0 : 1;
        killed = Clock::now();
        cluster.KillWorker(victim);
      }
    }
    grpc::Status s = reader->Finish();
    if (!s.ok() || ids != reference->ids) {
      ++mismatches;
      std::fprintf(stderr, "round %d: %s\n", k,
                   s.ok() ? "output differs from the no-fault run" : s.error_message().c_str());
    }
    if (gap >= 0) gaps.push_back(gap);
    if (victim >= 0) cluster.StartWorker(victim);
    if (isatty(STDERR_FILENO)) std::fprintf(stderr, "\rfailover_bench: %d/%d kills", k + 1, kills);
  }
  std::fprintf(stderr, "\n");
  std::printf("model %s, 2 replicas x 1 stage, %d kills\n", model.c_str(), kills);
  std::printf("SIGKILL -> next token on the other pipeline: p50 %.1f ms, max %.1f ms\n",
              Percentile(gaps, 0.5),
              gaps.empty() ? 0.0 : *std::max_element(gaps.begin(), gaps.end()));
  std::printf("normal inter-token gap: p50 %.2f ms\n", Percentile(itl, 0.5));
  std::printf("streams equal to the no-fault run: %d/%d\n", kills - mismatches, kills);
  return mismatches == 0 ? 0 : 1;
}

}  // namespace
}  // namespace shardserve::e2e

int main(int argc, char** argv) { return shardserve::e2e::Main(argc, argv); }
