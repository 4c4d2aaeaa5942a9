#include "kernels/backend_factory.h"

#include "absl/strings/str_cat.h"
#ifdef SHARDSERVE_HAS_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace shardserve {

bool BuiltWithCuda() {
#ifdef SHARDSERVE_HAS_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const std::string& kind,
                                                    const BackendOptions& options) {
  if (kind == "cpu") return NewCpuBackend(options.cpu);
  if (kind == "cuda") {
#ifdef SHARDSERVE_HAS_CUDA
    auto cuda =
        NewCudaBackend({.device = options.device, .memory_fraction = options.memory_fraction});
    if (!cuda.ok()) {
      return absl::Status(cuda.status().code(),
                          absl::StrCat("--backend cuda: ", cuda.status().message()));
    }
    return std::move(*cuda);
#else
    return absl::UnimplementedError(
        "--backend cuda: this build has no CUDA support (the CUDA toolkit was not found at "
        "configure time)");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("--backend '", kind, "' is not cpu or cuda"));
}

}  // namespace shardserve
