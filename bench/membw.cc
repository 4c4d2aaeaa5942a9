// Memory read bandwidth probe: sums a buffer much larger than the caches with T threads, each
// reading S interleaved streams, and prints GB/s. A decode roofline needs this figure. Which
// stream count reads fastest depends on the CPU: on the AMD EPYC (Zen 4) build machine one
// stream per core is fastest, on the Intel Xeon before it several streams were.
//
//   membw [--mb 1024] [--threads 2] [--streams 4] [--reps 5]
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

// Eight accumulators in all (8 / streams per stream), so no stream waits on the latency of its
// own additions: with one accumulator, one stream measured the add chain, not the memory.
__attribute__((target("avx2"))) float SumStreams(const float* p, size_t n, int streams) {
  const size_t per = n / streams;
  const int unroll = 8 / streams;
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  const size_t step = 8 * static_cast<size_t>(unroll);
  for (size_t i = 0; i + step <= per; i += step) {
    for (int s = 0; s < streams; ++s) {
      for (int u = 0; u < unroll; ++u) {
        acc[s * unroll + u] =
            _mm256_add_ps(acc[s * unroll + u], _mm256_loadu_ps(p + s * per + i + 8 * u));
      }
    }
  }
  float out[8];
  __m256 t = acc[0];
  for (int s = 1; s < 8; ++s) t = _mm256_add_ps(t, acc[s]);
  _mm256_storeu_ps(out, t);
  return out[0] + out[7];
}

}  // namespace

int main(int argc, char** argv) {
  size_t mb = 1024;
  int threads = 2, streams = 4, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const long v = std::strtol(argv[i + 1], nullptr, 10);
    if (f == "--mb")
      mb = v;
    else if (f == "--threads")
      threads = static_cast<int>(v);
    else if (f == "--streams")
      streams = static_cast<int>(v);
    else if (f == "--reps")
      reps = static_cast<int>(v);
    else {
      std::fprintf(stderr, "error: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  if ((streams != 1 && streams != 2 && streams != 4 && streams != 8) || threads < 1 || mb < 64) {
    std::fprintf(stderr, "error: need --streams 1, 2, 4 or 8, --threads >= 1, --mb >= 64\n");
    return 2;
  }
  const size_t n = mb * (1 << 20) / sizeof(float);
  std::vector<float> buf(n);
  std::memset(buf.data(), 1, n * sizeof(float));
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    std::vector<float> sums(threads);
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t per = n / threads;
        sums[t] = SumStreams(buf.data() + t * per, per, streams);
      });
    }
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (float v : sums) sink = sink + v;
    best = std::max(best, n * sizeof(float) / s / 1e9);
  }
  std::printf("{\"threads\": %d, \"streams\": %d, \"mb\": %zu, \"read_gb_per_s\": %.2f}\n", threads,
              streams, mb, best);
  return 0;
}
