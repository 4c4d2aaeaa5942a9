#include "kernels/cuda/cuda_handles.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace shardserve {

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg =
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return absl::UnavailableError(msg);
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<CudaStream> CudaStream::Create() {
  cudaStream_t s = nullptr;
  absl::Status st =
      CudaStatus(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  if (!st.ok()) return st;
  return CudaStream(s);
}

CudaStream::~CudaStream() { Reset(); }

CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
  if (this != &o) {
    Reset();
    stream_ = std::exchange(o.stream_, nullptr);
  }
  return *this;
}

void CudaStream::Reset() {
  if (stream_ == nullptr) return;
  const cudaError_t err = cudaStreamDestroy(stream_);
  if (err != cudaSuccess) LOG(WARNING) << CudaStatus(err, "cudaStreamDestroy").message();
  stream_ = nullptr;
}

absl::Status CudaStream::Synchronize() const {
  return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

absl::StatusOr<CudaEvent> CudaEvent::Create() {
  cudaEvent_t e = nullptr;
  absl::Status st =
      CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  if (!st.ok()) return st;
  return CudaEvent(e);
}

CudaEvent::~CudaEvent() { Reset(); }

CudaEvent& CudaEvent::operator=(CudaEvent&& o) noexcept {
  if (this != &o) {
    Reset();
    event_ = std::exchange(o.event_, nullptr);
  }
  return *this;
}

void CudaEvent::Reset() {
  if (event_ == nullptr) return;
  const cudaError_t err = cudaEventDestroy(event_);
  if (err != cudaSuccess) LOG(WARNING) << CudaStatus(err, "cudaEventDestroy").message();
  event_ = nullptr;
}

absl::Status CudaEvent::Record(cudaStream_t stream) const {
  return CudaStatus(cudaEventRecord(event_, stream), "cudaEventRecord");
}

absl::Status CudaEvent::MakeWait(cudaStream_t stream) const {
  return CudaStatus(cudaStreamWaitEvent(stream, event_, 0), "cudaStreamWaitEvent");
}

absl::StatusOr<bool> CudaEvent::Done() const {
  const cudaError_t err = cudaEventQuery(event_);
  if (err == cudaSuccess) return true;
  if (err == cudaErrorNotReady) return false;
  return CudaStatus(err, "cudaEventQuery");
}

absl::StatusOr<DeviceMemory> DeviceMemory::Allocate(size_t bytes) {
  void* p = nullptr;
  if (bytes > 0) {
    absl::Status st = CudaStatus(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc(", bytes, ")"));
    if (!st.ok()) return st;
  }
  return DeviceMemory(p, bytes);
}

DeviceMemory::~DeviceMemory() { Reset(); }

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    Reset();
    ptr_ = std::exchange(o.ptr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void DeviceMemory::Reset() {
  if (ptr_ == nullptr) return;
  const cudaError_t err = cudaFree(ptr_);
  if (err != cudaSuccess) LOG(WARNING) << CudaStatus(err, "cudaFree").message();
  ptr_ = nullptr;
  size_ = 0;
}

}  // namespace shardserve
