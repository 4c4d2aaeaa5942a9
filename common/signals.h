// SIGINT and SIGTERM for the server binaries: blocked in every thread (call before starting
// any), so that only the main thread's sigwait() sees them and drains.
#ifndef SHARDSERVE_COMMON_SIGNALS_H_
#define SHARDSERVE_COMMON_SIGNALS_H_

#include <pthread.h>
#include <signal.h>

namespace shardserve {

inline sigset_t BlockShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_SIGNALS_H_
