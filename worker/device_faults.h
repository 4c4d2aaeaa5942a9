// A test hook for device faults: a Backend that forwards to another until a chosen step, then
// fails as a CUDA backend does after a sticky error (an illegal address, a lost device). Every
// later op is skipped, Synchronize / CopyToHost / Allocate return the fault, and Health reports
// it. The worker turns NOT_SERVING on it as on a real fault (worker_service.h, "Device faults"),
// so the fault path is tested without a GPU (`shardserve-worker --fault-device-after-steps N`).
//
// Thread-safety: as Backend (one issuing thread at a time); BeginStep is called by that thread.
#ifndef SHARDSERVE_WORKER_DEVICE_FAULTS_H_
#define SHARDSERVE_WORKER_DEVICE_FAULTS_H_

#include <cstdint>
#include <memory>

#include "kernels/backend.h"

namespace shardserve {

class FaultyBackend : public Backend {
 public:
  // Counts a step that carries sequences; from step number `fail_at_step` (0-based) on, the
  // device has failed.
  virtual void BeginStep() = 0;
};

// Wraps `base` (not owned; must outlive the wrapper). `fail_at_step` >= 0.
std::unique_ptr<FaultyBackend> NewFaultyBackend(Backend* base, int64_t fail_at_step);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_DEVICE_FAULTS_H_
