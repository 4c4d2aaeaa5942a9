// Decode GEMV on K-quant weights (one token: out = W x), single-threaded, two ways, interleaved:
//   panel: each 16-row panel decoded to F32, then sgemm (the path before the integer kernels);
//   int:   the AVX2 integer kernels (Q8 activation blocks, sub-block integer dot products).
// Weights are random K-quant blocks; the default 45056 x 2048 matrix (eight of TinyLlama's MLP
// projections) is larger than the caches of the machines this runs on (32 MiB L3 and less).
// Prints the median time per GEMV and the weight bytes read per second; compare the latter with
// `membw --threads 1` for the roofline.
//
//   kquant_gemv [--rows 45056] [--k 2048] [--reps 9] [--dtype q4_k|q6_k|both]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/cpu/quant.h"

namespace {

using shardserve::DType;
using Clock = std::chrono::steady_clock;

std::vector<uint8_t> RandomRows(DType dt, int64_t rows, int64_t k) {
  std::mt19937 rng(1);
  std::vector<uint8_t> w(shardserve::RowBytes(dt, k) * rows);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const size_t block = shardserve::DTypeBlockBytes(dt);
  const uint16_t d = shardserve::F32ToF16(0.01f);
  for (size_t off = 0; off < w.size(); off += block) {
    if (dt == DType::kQ4_K) {
      std::memcpy(&w[off], &d, 2);
      std::memcpy(&w[off + 2], &d, 2);
    } else {
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
  int64_t rows = 45056, k = 2048;
  int reps = 9;
  std::string which = "both";
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
      std::fprintf(stderr, "error: unknown flag %s; see the header of bench/kquant_gemv.cc\n",
                   f.c_str());
      return 2;
    }
  }
  if (rows < 16 || k < 256 || k % 256 != 0 || reps < 1) {
    std::fprintf(stderr, "error: --rows >= 16, --k a multiple of 256, --reps >= 1\n");
    return 2;
  }
  openblas_set_num_threads(1);
  std::vector<float> x(k);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  std::vector<shardserve::cpu::Q8Block> xq(k / 32);
  std::vector<float> out(rows), panel(16 * k);
  for (DType dt : {DType::kQ4_K, DType::kQ6_K}) {
    const std::string name = dt == DType::kQ4_K ? "q4_k" : "q6_k";
    if (which != "both" && which != name) continue;
    const std::vector<uint8_t> w = RandomRows(dt, rows, k);
    const size_t row_bytes = shardserve::RowBytes(dt, k);
    std::vector<double> panel_s, int_s;
    for (int r = 0; r < reps + 1; ++r) {  // the first round warms up
      auto t0 = Clock::now();
      for (int64_t p = 0; p < rows; p += 16) {
        const int64_t pe = std::min<int64_t>(rows, p + 16);
        for (int64_t j = p; j < pe; ++j) {
          shardserve::cpu::DequantizeRow(dt, &w[j * row_bytes], k, &panel[(j - p) * k]);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, static_cast<int>(pe - p),
                    static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k), panel.data(),
                    static_cast<int>(k), 0.0f, out.data() + p, static_cast<int>(rows));
      }
      const double a = std::chrono::duration<double>(Clock::now() - t0).count();
      t0 = Clock::now();
      shardserve::cpu::QuantizeActivations(x.data(), k, xq.data());
      shardserve::cpu::Avx2KQuantGemvRows(dt, w.data(), k, xq.data(), 1, k / 32, nullptr,
                                          out.data(), rows, 0, rows);
      const double b = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r > 0) {
        panel_s.push_back(a);
        int_s.push_back(b);
      }
    }
    const double bytes = static_cast<double>(w.size());
    std::printf(
        "%s %lldx%lld (%.1f MiB): panel %.3f ms (%.2f GB/s), int %.3f ms (%.2f GB/s), "
        "speed-up %.2fx\n",
        name.c_str(), static_cast<long long>(rows), static_cast<long long>(k), bytes / (1 << 20),
        Median(panel_s) * 1e3, bytes / Median(panel_s) / 1e9, Median(int_s) * 1e3,
        bytes / Median(int_s) / 1e9, Median(panel_s) / Median(int_s));
  }
  return 0;
}
