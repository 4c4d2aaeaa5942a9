// Helpers shared by the CUDA tests: backends, host <-> backend tensors, tolerances.
//
// The tests need a GPU. Without one NewCudaBackend fails with UNAVAILABLE and the tests skip,
// unless SHARDSERVE_REQUIRE_GPU is set (scripts/gpu-check.sh sets it), in which case they fail.
#ifndef SHARDSERVE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
#define SHARDSERVE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace shardserve::testing_cuda {

// Sets *out to a CUDA backend, or marks the test skipped (failed under SHARDSERVE_REQUIRE_GPU).
#define SHARDSERVE_GET_CUDA_BACKEND_OR_SKIP(out)                                   \
  do {                                                                             \
    auto shardserve_b_ = ::shardserve::NewCudaBackend({});                         \
    if (!shardserve_b_.ok()) {                                                     \
      if (std::getenv("SHARDSERVE_REQUIRE_GPU") != nullptr) {                      \
        FAIL() << "SHARDSERVE_REQUIRE_GPU is set but: " << shardserve_b_.status(); \
      }                                                                            \
      GTEST_SKIP() << shardserve_b_.status();                                      \
    }                                                                              \
    out = std::move(*shardserve_b_);                                               \
  } while (0)

// Machine epsilon of a dtype (2^-(mantissa bits)).
inline float Epsilon(DType t) {
  switch (t) {
    case DType::kF16:
      return 0x1.0p-10f;
    case DType::kBF16:
      return 0x1.0p-7f;
    default:
      return 0x1.0p-23f;
  }
}

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Values as stored in `t` (F32, F16 or BF16).
inline std::vector<uint8_t> Encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * DTypeSize(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[4 * i], &v[i], 4);
    } else {
      const uint16_t h = t == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

// A tensor in `backend`'s memory, with the buffer that owns it.
struct BackendTensor {
  std::unique_ptr<Buffer> buffer;
  Tensor t;
};

inline BackendTensor Put(Backend& backend, const void* host, size_t bytes, DType dtype,
                         int64_t rows, int64_t cols) {
  BackendTensor bt;
  auto b = backend.Allocate(std::max<size_t>(bytes, 4));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return bt;
  bt.buffer = std::move(*b);
  backend.CopyToDevice(bt.buffer->data(), host, bytes);
  bt.t = Tensor::Of(bt.buffer->data(), dtype, rows, cols);
  return bt;
}

inline BackendTensor PutF32(Backend& backend, const std::vector<float>& v, int64_t rows,
                            int64_t cols) {
  return Put(backend, v.data(), v.size() * sizeof(float), DType::kF32, rows, cols);
}

inline std::vector<float> Get(Backend& backend, const void* device, size_t floats) {
  std::vector<float> v(floats);
  const absl::Status s = backend.CopyToHost(v.data(), device, floats * sizeof(float));
  EXPECT_TRUE(s.ok()) << s;
  return v;
}

inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0.0f;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = d;  // NaN propagates as a failure
  }
  return m;
}

inline float MaxAbs(const std::vector<float>& a) {
  float m = 0.0f;
  for (float x : a) m = std::max(m, std::fabs(x));
  return m;
}

}  // namespace shardserve::testing_cuda

#endif  // SHARDSERVE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
