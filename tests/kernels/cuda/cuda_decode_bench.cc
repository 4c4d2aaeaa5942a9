// Decode throughput of a model on the CUDA (or CPU) backend: prefills `batch` sequences of
// `prompt` tokens, then times `steps` greedy decode steps of the whole batch. Prints one JSON
// object. `--probe` only reports the device (exit status 2 when there is no usable GPU), which
// scripts/gpu-check.sh uses to refuse cleanly.
//
//   cuda_decode_bench --model DIR [--batch N] [--prompt N] [--steps N] [--backend cuda|cpu]
//   cuda_decode_bench --probe
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/stage.h"

namespace shardserve {
namespace {

int Fail(const std::string& msg, int code = 1) {
  std::fprintf(stderr, "cuda_decode_bench: %s\n", msg.c_str());
  return code;
}

int Main(int argc, char** argv) {
  std::string model, backend_name = "cuda";
  int64_t batch = 1, prompt = 32, steps = 64;
  bool probe = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--probe") {
      probe = true;
    } else if (a == "--model") {
      model = value();
    } else if (a == "--backend") {
      backend_name = value();
    } else if (a == "--batch") {
      batch = std::atoll(value());
    } else if (a == "--prompt") {
      prompt = std::atoll(value());
    } else if (a == "--steps") {
      steps = std::atoll(value());
    } else {
      return Fail("unknown argument " + a);
    }
  }
  if (probe) {
    auto info = DescribeCudaDevice(0);
    if (!info.ok()) return Fail(std::string(info.status().message()), 2);
    std::printf("{\"device\": \"%s\", \"compute_capability\": \"%d.%d\", \"total_bytes\": %lld}\n",
                info->name.c_str(), info->compute_major, info->compute_minor,
                static_cast<long long>(info->total_bytes));
    return 0;
  }
  if (model.empty() || batch < 1 || prompt < 1 || steps < 1) {
    return Fail("usage: --model DIR [--batch N>=1] [--prompt N>=1] [--steps N>=1]");
  }
  std::unique_ptr<Backend> backend;
  if (backend_name == "cuda") {
    auto b = NewCudaBackend({});
    if (!b.ok()) return Fail(std::string(b.status().message()), 2);
    backend = std::move(*b);
  } else if (backend_name == "cpu") {
    backend = NewCpuBackend({});
  } else {
    return Fail("--backend must be cuda or cpu");
  }
  const int64_t block = 16;
  const int64_t blocks_per_seq = (prompt + steps + block) / block + 1;
  const auto t_load = std::chrono::steady_clock::now();
  auto stage = LoadStage(model, {}, {block, batch * blocks_per_seq}, backend.get());
  if (!stage.ok()) return Fail(std::string(stage.status().message()));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const int64_t vocab = (*stage)->config().vocab_size;

  std::vector<SequenceStep> seqs(batch);
  for (int64_t s = 0; s < batch; ++s) {
    seqs[s].block_table.resize(blocks_per_seq);
    std::iota(seqs[s].block_table.begin(), seqs[s].block_table.end(),
              static_cast<int32_t>(s * blocks_per_seq));
    for (int64_t t = 0; t < prompt; ++t) {
      seqs[s].tokens.push_back(static_cast<int32_t>(3 + (s * 131 + t * 17) % (vocab - 3)));
    }
    seqs[s].compute_logits = true;
  }
  auto step = [&]() -> bool {
    auto out = (*stage)->Forward(seqs, {});
    if (!out.ok()) {
      Fail(std::string(out.status().message()));
      return false;
    }
    for (int64_t s = 0; s < batch; ++s) {
      const float* row = out->data.data() + s * vocab;
      seqs[s].start_pos += static_cast<int64_t>(seqs[s].tokens.size());
      seqs[s].tokens = {static_cast<int32_t>(std::max_element(row, row + vocab) - row)};
    }
    return true;
  };
  const auto t0 = std::chrono::steady_clock::now();
  if (!step()) return 1;
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<double> step_ms;
  for (int64_t i = 0; i < steps; ++i) {
    const auto a = std::chrono::steady_clock::now();
    if (!step()) return 1;
    step_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  const double decode_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::vector<double> sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  std::printf(
      "{\"backend\": \"%s\", \"batch\": %lld, \"prompt_tokens\": %lld, \"decode_steps\": %lld, "
      "\"load_s\": %.3f, \"prefill_s\": %.4f, \"decode_tokens_per_s\": %.2f, "
      "\"step_ms_p50\": %.3f, \"step_ms_max\": %.3f}\n",
      std::string(backend->name()).c_str(), static_cast<long long>(batch),
      static_cast<long long>(prompt), static_cast<long long>(steps), load_s,
      std::chrono::duration<double>(t1 - t0).count(), static_cast<double>(batch * steps) / decode_s,
      sorted[sorted.size() / 2], sorted.back());
  return 0;
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) { return shardserve::Main(argc, argv); }
