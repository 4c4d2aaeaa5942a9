// One way to make a compute backend by name, for the worker, `shardserve generate` and tests.
#ifndef SHARDSERVE_KERNELS_BACKEND_FACTORY_H_
#define SHARDSERVE_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace shardserve {

struct BackendOptions {
  CpuBackendOptions cpu;         // --backend cpu
  int device = 0;                // --backend cuda: GPU index
  double memory_fraction = 0.9;  // --backend cuda: share of the GPU's memory
};

// "cpu" or "cuda". INVALID_ARGUMENT for another name; UNIMPLEMENTED for cuda in a build without
// CUDA; the CUDA backend's own error when no usable GPU is there. Messages name --backend.
absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const std::string& kind,
                                                    const BackendOptions& options);

// Whether this build can make a "cuda" backend.
bool BuiltWithCuda();

}  // namespace shardserve

#endif  // SHARDSERVE_KERNELS_BACKEND_FACTORY_H_
