// shardserve-worker: hosts one pipeline stage behind WorkerService. Flags are in
// worker/worker_config.h; the process itself is worker/worker.h.
#include <csignal>
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "common/cli_flags.h"
#include "common/logging.h"
#include "common/signals.h"
#include "worker/worker.h"
#include "worker/worker_config.h"

namespace shardserve {
namespace {

int Fail(const absl::Status& status, int code) {
  std::fprintf(stderr, "shardserve-worker: error: %s\n", std::string(status.message()).c_str());
  return code;
}

int WorkerMain(int argc, char** argv) {
  const sigset_t signals = BlockShutdownSignals();  // before any thread starts
  // Abseil's lock-order graph is a debugging aid that costs every contended lock a graph
  // update; the thread-safety analysis and TSan check lock order in CI instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"shardserve-worker: one pipeline stage of a shardserve cluster"};
  WorkerConfig config;
  AddWorkerFlags(app, &config);
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  auto worker = Worker::Create(std::move(config));
  if (!worker.ok()) {
    // Bad flags and files are 2; a backend that cannot start (no GPU) is 1.
    const bool bad_input = worker.status().code() == absl::StatusCode::kInvalidArgument;
    return Fail(worker.status(), bad_input ? 2 : 1);
  }
  if (absl::Status s = (*worker)->Serve(); !s.ok()) return Fail(s, 2);
  int sig = 0;
  sigwait(&signals, &sig);
  LOG(INFO) << "shardserve-worker: signal " << sig;
  (*worker)->DrainAndStop(signals);
  return 0;
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) { return shardserve::WorkerMain(argc, argv); }
