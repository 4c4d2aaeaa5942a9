// Helpers for end-to-end tests: real shardserve-worker / shardserve-router processes on
// 127.0.0.1 with free ports, the single-process reference (`shardserve generate --json`), and
// gRPC calls with deadlines. Processes are killed when their handle goes away.
#ifndef SHARDSERVE_TESTS_E2E_CLUSTER_HARNESS_H_
#define SHARDSERVE_TESTS_E2E_CLUSTER_HARNESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cli/complete.h"
#include "shardserve/v1/inference.grpc.pb.h"
#include "shardserve/v1/worker.grpc.pb.h"

namespace shardserve::e2e {

std::string BinPath(const std::string& name);  // build/bin/<name>
std::string Stories260K();                     // ../shared/models/stories260K from the repo root
// A synthetic 8-layer model, written once into the build tree.
// A random-weight model of a `shardserve synth --like` shape, written once per build tree.
std::string SyntheticModel(const std::string& like);
// Only config.json and the tokenizer of a shape (`shardserve synth --config-only`), for
// simulated workers (--backend sim).
std::string ShapeOnlyModel(const std::string& like);
std::string Synthetic8Layer();
int FreePort();
// The cluster secret every router and worker the tests start uses: written once per build tree,
// exported as $SHARDSERVE_CLUSTER_SECRET_FILE (so every child process reads it) and sent by this
// process's own calls to workers. Processes and commands started here call it themselves.
const std::string& ClusterSecretFile();

class Process;
// The port a process started with --port-file wrote there: 0 when it exited, or wrote nothing
// within `timeout`.
int WaitPortFile(const std::string& port_file, Process& process,
                 absl::Duration timeout = absl::Seconds(30));

class Process {
 public:
  Process(std::vector<std::string> args, std::string log_path);
  ~Process();
  pid_t pid() const { return pid_; }
  bool alive();
  void Kill(int sig);
  // Waits up to `timeout` for the process to exit; its exit code, or -1 when it did not exit
  // in time or was killed by a signal.
  int Wait(absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// Members default-initialised, so designated initializers may leave any of them out.
struct ClusterOptions {
  std::string model{};
  int stages = 1;
  int replicas = 1;
  std::vector<std::string> worker_args{};   // extra flags for every worker
  std::vector<std::string> worker0_args{};  // extra flags for the first worker only
  std::vector<std::string> router_args{};
  std::vector<std::string> worker_addresses{};  // override (e.g. a dead address)
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options);
  // Waits until the router's health says SERVING, it is this cluster's router and every pipeline
  // is ready; a router or worker that could not bind its port is started again on another.
  absl::Status WaitServing(absl::Duration timeout);
  const std::string& router_address() const { return router_address_; }
  const std::vector<std::string>& worker_addresses() const { return worker_addresses_; }
  Process& router() { return *router_; }
  const std::string& router_log() const { return router_log_; }
  Process& worker(int i) { return *workers_[i]; }
  // SIGKILLs worker i (and reaps it); StartWorker starts it again on the same address, with the
  // same flags, as a replacement with nothing loaded.
  void KillWorker(int i);
  void StartWorker(int i);
  std::unique_ptr<v1::InferenceService::Stub> Stub() const;

 private:
  void StartWorkerOnNewPort(int i);
  void StartRouter();
  // -1 when the router on router_address_ is not ours (it names other workers), 1 when it is
  // and every pipeline is ready, 0 otherwise.
  int OursAndReady();

  ClusterOptions options_;
  std::string logs_;
  std::vector<std::unique_ptr<Process>> workers_;
  std::vector<std::vector<std::string>> worker_args_;
  std::vector<std::string> worker_logs_;
  int restarts_ = 0;
  bool served_ = false;
  std::unique_ptr<Process> router_;
  std::string router_log_;
  std::string router_address_;
  std::vector<std::string> worker_addresses_;
};

struct Reference {
  std::vector<int32_t> ids;
  std::string text;
};
absl::StatusOr<Reference> RunGenerate(const std::string& model, const std::string& prompt,
                                      int max_tokens, float temperature, uint64_t seed);

v1::GenerateRequest TextRequest(const std::string& prompt, int max_tokens, float temperature,
                                uint64_t seed);

absl::StatusOr<v1::StatsResponse> WorkerStats(const std::string& address);
absl::StatusOr<v1::DescribeResponse> WorkerDescribe(const std::string& address);

// A finished command: its exit status (-1 when it did not exit normally) and its output.
struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs `args` (no shell) with `input` on stdin, killing it after `timeout`.
CommandResult RunCommand(const std::vector<std::string>& args, const std::string& input,
                         absl::Duration timeout);

}  // namespace shardserve::e2e

#endif  // SHARDSERVE_TESTS_E2E_CLUSTER_HARNESS_H_
