// Decode GEMV on quantized weights (one token: out = W x), single-threaded, each kernel path the
// CPU has, interleaved within each round: the AVX2 kernels, AVX-VNNI (Q8_0 / Q4_0) and AVX-512
// VNNI (for Q4_0, IQ4_NL, Q4_K and Q6_K also on weights repacked into 16 interleaved rows,
// `avx512-vnni-x16`). Activations are quantized to Q8 blocks once per GEMV, as the backend does.
// Weights are random blocks; the default 45056 x 2048 matrix (eight of TinyLlama's MLP projections)
// is larger than the caches of the machines this runs on (32 MiB L3 and less). Prints the median
// time per GEMV and the weight bytes read per second; compare the latter with `membw --threads 1`.
//
//   quant_gemv [--rows 45056] [--k 2048] [--reps 9] [--dtype
//   q8_0|q4_0|q5_0|q5_1|q4_k|q5_k|q6_k|all]
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
#include "kernels/cpu/quant.h"

namespace {

using shardserve::DType;
using shardserve::cpu::Q8Block;
using Clock = std::chrono::steady_clock;

// Random bytes with every block scale set to a small finite value.
std::vector<uint8_t> RandomRows(DType dt, int64_t rows, int64_t k) {
  std::mt19937 rng(1);
  std::vector<uint8_t> w(shardserve::RowBytes(dt, k) * rows);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const size_t block = shardserve::DTypeBlockBytes(dt);
  const uint16_t d = shardserve::F32ToF16(0.01f);
  for (size_t off = 0; off < w.size(); off += block) {
    switch (dt) {
      case DType::kQ4_K:
      case DType::kQ5_K:
      case DType::kQ5_1:
        std::memcpy(&w[off + 2], &d, 2);
        [[fallthrough]];
      case DType::kQ8_0:
      case DType::kQ4_0:
      case DType::kQ5_0:
      case DType::kIQ4_NL:
        std::memcpy(&w[off], &d, 2);
        break;
      default:
        std::memcpy(&w[off + 208], &d, 2);
    }
  }
  return w;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  namespace cpu = shardserve::cpu;
  int64_t rows = 45056, k = 2048;
  int reps = 9;
  std::string which = "all";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    if (f == "--rows") {
      rows = std::strtoll(argv[i + 1], nullptr, 10);
    } else if (f == "--k") {
      k = std::strtoll(argv[i + 1], nullptr, 10);
    } else if (f == "--reps") {
      reps = std::atoi(argv[i + 1]);
    } else if (f == "--dtype") {
      which = argv[i + 1];
    } else {
      std::fprintf(stderr, "error: unknown flag %s; see the header of bench/quant_gemv.cc\n",
                   f.c_str());
      return 2;
    }
  }
  if (rows < 16 || k < 256 || k % 256 != 0 || reps < 1) {
    std::fprintf(stderr, "error: --rows >= 16, --k a multiple of 256, --reps >= 1\n");
    return 2;
  }
  std::vector<float> x(k);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  std::vector<Q8Block> xq(k / 32);
  std::vector<float> out(rows);
  for (DType dt : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ5_1, DType::kIQ4_NL,
                   DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    std::string name(shardserve::DTypeName(dt));
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    if (which != "all" && which != name) continue;
    const std::vector<uint8_t> w = RandomRows(dt, rows, k);
    const bool kq = dt == DType::kQ4_K || dt == DType::kQ5_K || dt == DType::kQ6_K;
    const bool q5 = dt == DType::kQ5_0 || dt == DType::kQ5_1;
    struct Path {
      const char* name;
      std::function<void()> run;
      std::vector<double> seconds = {};
    };
    std::vector<Path> paths;
    paths.push_back({"avx2", [&] {
                       if (q5) {
                         cpu::Avx2Q5GemvRows(dt, w.data(), k, xq.data(), 1, k / 32, nullptr,
                                             out.data(), rows, 0, rows);
                       } else if (kq) {
                         cpu::Avx2KQuantGemvRows(dt, w.data(), k, xq.data(), 1, k / 32, nullptr,
                                                 out.data(), rows, 0, rows);
                       } else {
                         cpu::Avx2QuantGemvRows(dt, w.data(), k, xq.data(), 1, k / 32, nullptr,
                                                out.data(), rows, 0, rows);
                       }
                     }});
    if ((dt == DType::kQ8_0 || dt == DType::kQ4_0) && cpu::CpuHasAvxVnni()) {
      paths.push_back({"avx-vnni", [&] {
                         cpu::VnniQuantGemvRows1(dt, w.data(), k, xq.data(), nullptr, out.data(), 0,
                                                 rows);
                       }});
    }
    // The formats the backend repacks at load into 16 interleaved rows.
    const cpu::Repacked* x16 = cpu::RepackedFormat(dt, k);
    std::vector<uint8_t> repacked;
    if (x16 != nullptr && cpu::CpuHasAvx512Vnni() && rows % 16 == 0) {
      repacked.resize(w.size());
      x16->repack(w.data(), rows, k, repacked.data());
      paths.push_back({"avx512-vnni-x16", [&, x16] {
                         x16->rows(repacked.data(), k, xq.data(), 1, k / 32, nullptr, out.data(),
                                   rows, 0, rows);
                       }});
    }
    if (cpu::CpuHasAvx512Vnni()) {
      paths.push_back({"avx512-vnni", [&] {
                         cpu::Avx512VnniQuantGemvRows(dt, w.data(), k, xq.data(), 1, k / 32,
                                                      nullptr, out.data(), rows, 0, rows);
                       }});
    }
    for (int r = 0; r < reps + 1; ++r) {  // the first round warms up
      for (Path& p : paths) {
        const auto t0 = Clock::now();
        cpu::QuantizeActivations(x.data(), k, xq.data());
        p.run();
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (r > 0) p.seconds.push_back(s);
      }
    }
    const double bytes = static_cast<double>(w.size());
    std::printf("%s %lldx%lld (%.1f MiB):", name.c_str(), static_cast<long long>(rows),
                static_cast<long long>(k), bytes / (1 << 20));
    for (const Path& p : paths) {
      std::printf("  %s %.3f ms (%.2f GB/s)", p.name, Median(p.seconds) * 1e3,
                  bytes / Median(p.seconds) / 1e9);
    }
    std::printf("\n");
  }
  return 0;
}
