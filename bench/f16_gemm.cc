// Prefill GEMM on F32 or 16-bit weights (a prompt of n rows times one weight matrix:
// out = X W^T) through the CPU backend, its rows split across --threads: the AVX-512 GEMM where
// the CPU has AVX-512, and the AVX2 path (16-bit panels widened to F32, then OpenBLAS sgemm) for
// comparison; for BF16 weights also the AVX512-BF16 dot-product GEMM (activations rounded to
// BF16) where the CPU has it. The default shape is TinyLlama's MLP up projection at the
// 562-token prompt of bench/vs_llamacpp.sh.
// Prints the median time and GFLOP/s of each path, interleaved within each round.
//
//   f16_gemm [--n 562] [--rows 5632] [--k 2048] [--threads 2] [--reps 5] [--dtype f32|f16|bf16]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/kernels.h"  // CpuHasAvx512

namespace {

using shardserve::DType;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  namespace cpu = shardserve::cpu;
  int64_t n = 562, rows = 5632, k = 2048;
  int reps = 5, threads = 2;
  std::string dtype = "f16";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    if (f == "--n") {
      n = std::strtoll(argv[i + 1], nullptr, 10);
    } else if (f == "--rows") {
      rows = std::strtoll(argv[i + 1], nullptr, 10);
    } else if (f == "--k") {
      k = std::strtoll(argv[i + 1], nullptr, 10);
    } else if (f == "--reps") {
      reps = std::atoi(argv[i + 1]);
    } else if (f == "--threads") {
      threads = std::atoi(argv[i + 1]);
    } else if (f == "--dtype") {
      dtype = argv[i + 1];
    } else {
      std::fprintf(stderr, "error: unknown flag %s; see the header of bench/f16_gemm.cc\n",
                   f.c_str());
      return 2;
    }
  }
  const std::optional<DType> dt = shardserve::ParseDType(dtype);
  if (n < 1 || rows < 1 || k < 16 || reps < 1 || threads < 1 || !dt.has_value() ||
      (*dt != DType::kF32 && *dt != DType::kF16 && *dt != DType::kBF16)) {
    std::fprintf(
        stderr,
        "error: --n, --rows, --threads >= 1, --k >= 16, --reps >= 1, --dtype f32|f16|bf16\n");
    return 2;
  }
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * k);
  for (float& v : x) v = normal(rng);
  // Enough copies of the matrix to pass 128 MiB, used in turn, so the weights come from memory
  // as a model's do, not from the last level cache.
  const size_t es = shardserve::DTypeSize(*dt);
  const int64_t copies =
      std::max<int64_t>(1, (int64_t{128} << 20) / (rows * k * static_cast<int64_t>(es)) + 1);
  std::vector<std::vector<uint16_t>> ws(copies, std::vector<uint16_t>(rows * k * es / 2));
  for (auto& w : ws) {
    for (int64_t i = 0; i < rows * k; ++i) {
      const float f = 0.02f * normal(rng);
      if (*dt == DType::kF32) {
        std::memcpy(w.data() + 2 * i, &f, 4);
      } else {
        w[i] = *dt == DType::kF16 ? shardserve::F32ToF16(f) : shardserve::F32ToBf16(f);
      }
    }
  }
  int64_t turn = 0;
  std::vector<float> out(n * rows);
  struct Path {
    const char* name;
    std::function<void()> run;
    std::vector<double> seconds = {};
  };
  std::vector<Path> paths;
  // Through the backend, as a stage calls it: its rows split across --threads.
  auto run = [&](shardserve::Backend* b) {
    b->MatMul(shardserve::Tensor::Of(x.data(), DType::kF32, n, k),
              shardserve::Tensor::Of(ws[turn++ % copies].data(), *dt, rows, k), nullptr,
              shardserve::Tensor::Of(out.data(), DType::kF32, n, rows));
  };
  auto gemm = shardserve::NewCpuBackend({.threads = threads, .avx512_bf16 = false});
  auto bf16_dot = shardserve::NewCpuBackend({.threads = threads});
  auto sgemm = shardserve::NewCpuBackend({.threads = threads, .avx512 = false});
  if (cpu::CpuHasAvx512()) paths.push_back({"avx512-gemm", [&] { run(gemm.get()); }});
  if (*dt == DType::kBF16 && cpu::CpuHasAvx512() && cpu::CpuHasAvx512Bf16()) {
    paths.push_back({"avx512-bf16-dot", [&] { run(bf16_dot.get()); }});
  }
  paths.push_back({"widen+sgemm", [&] { run(sgemm.get()); }});
  for (int r = 0; r < reps + 1; ++r) {  // the first round warms up
    for (Path& p : paths) {
      const auto t0 = Clock::now();
      p.run();
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r > 0) p.seconds.push_back(s);
    }
  }
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(rows) * k;
  std::printf("%s n %lld x %lldx%lld:", dtype.c_str(), static_cast<long long>(n),
              static_cast<long long>(rows), static_cast<long long>(k));
  for (const Path& p : paths) {
    std::printf("  %s %.1f ms (%.1f GFLOP/s)", p.name, Median(p.seconds) * 1e3,
                flops / Median(p.seconds) / 1e9);
  }
  std::printf("\n");
  return 0;
}
