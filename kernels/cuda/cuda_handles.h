// RAII owners of CUDA runtime handles, and the mapping from CUDA errors to absl::Status.
//
// Each wrapper owns exactly one handle, is movable and not copyable, and releases the handle in
// its destructor. Destructors never throw and never abort: a failure to release (typically a
// device that already failed) is logged and otherwise ignored, because a destructor runs during
// error handling too. Creation goes through static factories that return absl::StatusOr.
//
// Thread-safety: a wrapper is as thread-safe as the handle it owns (streams and events may be
// used from several threads; the wrapper objects themselves must not be moved concurrently).
#ifndef SHARDSERVE_KERNELS_CUDA_CUDA_HANDLES_H_
#define SHARDSERVE_KERNELS_CUDA_CUDA_HANDLES_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve {

// OK for cudaSuccess; otherwise INTERNAL (UNAVAILABLE for a missing device or driver,
// RESOURCE_EXHAUSTED for out-of-memory) with `what` and the CUDA error name and text.
absl::Status CudaStatus(cudaError_t err, absl::string_view what);

class CudaStream {
 public:
  CudaStream() = default;
  // A non-blocking stream (it does not synchronize with the legacy default stream).
  static absl::StatusOr<CudaStream> Create();
  ~CudaStream();
  CudaStream(CudaStream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  CudaStream& operator=(CudaStream&& o) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  cudaStream_t get() const { return stream_; }
  absl::Status Synchronize() const;

 private:
  explicit CudaStream(cudaStream_t s) : stream_(s) {}
  void Reset();
  cudaStream_t stream_ = nullptr;
};

class CudaEvent {
 public:
  CudaEvent() = default;
  // Timing disabled: the event is used for ordering and completion polling.
  static absl::StatusOr<CudaEvent> Create();
  ~CudaEvent();
  CudaEvent(CudaEvent&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  cudaEvent_t get() const { return event_; }
  absl::Status Record(cudaStream_t stream) const;
  // Makes `stream` wait (on the device) for the last Record.
  absl::Status MakeWait(cudaStream_t stream) const;
  // True once the recorded work finished; an error status if it failed.
  absl::StatusOr<bool> Done() const;

 private:
  explicit CudaEvent(cudaEvent_t e) : event_(e) {}
  void Reset();
  cudaEvent_t event_ = nullptr;
};

// cudaMalloc'd device memory.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  static absl::StatusOr<DeviceMemory> Allocate(size_t bytes);
  ~DeviceMemory();
  DeviceMemory(DeviceMemory&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* get() const { return ptr_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  DeviceMemory(void* p, size_t n) : ptr_(p), size_(n) {}
  void Reset();
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace shardserve

#endif  // SHARDSERVE_KERNELS_CUDA_CUDA_HANDLES_H_
