// The CUDA backend: every op of kernels/backend.h on one GPU, plus sampling on the device.
//
// Buffers from Allocate() / UploadWeights() are device memory (cudaMalloc); their data() is a
// device pointer that only this backend's ops and Copy* calls may touch. All work is queued on
// one non-blocking stream owned by the backend, in issue order; ops return before the device
// finishes, and the first failure is kept and reported by Synchronize() / CopyToHost() /
// Health() (every later op is skipped). Index arrays passed as host spans are copied to the
// device by the op, only when their contents differ from the previous call's (every layer of a
// step passes the same positions and block tables).
//
// MatMul: cuBLASLt for F16 / BF16 / F32 weights. Activations are F32 in this interface; for
// 16-bit weights they are rounded to the weight's dtype on the fly and multiplied on tensor
// cores with F32 accumulation and F32 output (the same precision a BF16 model has on vLLM or
// TensorRT-LLM). Batches of at most kMaxGemvRows rows (decode) take a GEMV kernel instead that
// keeps activations in F32 and reads each weight once. Block-quantized weights are refused
// (SupportsOp false).
//
// Not done yet: CUDA graphs for the decode step (each op is a separate launch) and kernels for
// block-quantized weights.
//
// Thread-safety: as Backend: one issuing thread at a time. The backend binds its device on each
// call, so the issuing thread may change between calls.
#ifndef SHARDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
#define SHARDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "kernels/sampling.h"

namespace shardserve {

struct CudaBackendOptions {
  int device = 0;
  // Share of the device's total memory this backend may allocate (weights, KV pages,
  // workspaces); Allocate beyond it fails with RESOURCE_EXHAUSTED.
  double memory_fraction = 0.9;
};

struct CudaDeviceInfo {
  int device = 0;
  std::string name;
  std::string uuid;  // GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, as nvidia-smi prints it
  int compute_major = 0, compute_minor = 0;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
};

// The device's description; UNAVAILABLE when there is no usable GPU or driver.
absl::StatusOr<CudaDeviceInfo> DescribeCudaDevice(int device);

// UNAVAILABLE (with the CUDA error and a hint that the CPU backend works without a GPU) when
// there is no usable device or driver; INVALID_ARGUMENT for a bad device index or fraction.
absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const CudaBackendOptions& options);

// Bytes the backend may still allocate under its memory fraction (for sizing KV pages).
// `backend` must come from NewCudaBackend.
int64_t CudaBackendFreeBytes(const Backend& backend);

// Samples one token per row of `logits` ([rows, vocab] F32 in `backend`'s memory, e.g. the
// output of the LM-head MatMul) on the device. Row i uses params[i], the position positions[i]
// and histories[i] for the penalties, with exactly the rules of the CPU sampler (model/sampler.h,
// kernels/sampling.h), so the CPU and GPU pick the same tokens from the same logits. Parameters
// must have passed ValidateSamplingParams. Waits for the result. `backend` must come from
// NewCudaBackend.
absl::StatusOr<std::vector<SampleResult>> SampleOnDevice(
    Backend& backend, const Tensor& logits, absl::Span<const SamplingParams> params,
    absl::Span<const int64_t> positions, absl::Span<const absl::Span<const int32_t>> histories);

}  // namespace shardserve

#endif  // SHARDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
