// shardserve-router: the public gRPC API in front of pipeline replicas of workers. Flags are in
// router/router_config.h; the process itself is router/router.h.
#include <csignal>
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "common/cli_flags.h"
#include "common/logging.h"
#include "common/signals.h"
#include "router/router.h"
#include "router/router_config.h"

namespace shardserve {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "shardserve-router: error: %s\n", std::string(status.message()).c_str());
  return 2;
}

int RouterMain(int argc, char** argv) {
  const sigset_t signals = BlockShutdownSignals();  // before any thread starts
  // Abseil's lock-order graph is a debugging aid that costs every contended lock a graph
  // update; the thread-safety analysis and TSan check lock order in CI instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  CLI::App app{"shardserve-router: serves a model split into pipeline stages across workers"};
  RouterConfig config;
  AddRouterFlags(app, &config);
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  auto router = Router::Create(std::move(config));
  if (!router.ok()) return Fail(router.status());
  if (absl::Status s = (*router)->Serve(); !s.ok()) return Fail(s);
  int sig = 0;
  sigwait(&signals, &sig);
  LOG(INFO) << "shardserve-router: signal " << sig;
  (*router)->DrainAndStop(signals);
  return 0;
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) { return shardserve::RouterMain(argc, argv); }
