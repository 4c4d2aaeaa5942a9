// Fuzzes the worker's StepPlan validation: the fuzz bytes are a serialized StepPlan, as a worker
// receives it from the network. Two runtimes over the stories260K model:
//   - a last, non-first stage with no upstream link: Execute() validates the plan and then stops
//     at the missing link, so it sees every plan without running the model;
//   - a whole-model stage: plans that pass validation run for real (forward pass, sampling), and
//     the response must have one token in the vocabulary per sampled sequence.
// Sequences the plan touched are released afterwards, so inputs do not depend on each other.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "kernels/backend.h"
#include "model/stage.h"
#include "shardserve/v1/worker.pb.h"
#include "worker/stage_runtime.h"

namespace {

constexpr char kModel[] = "../shared/models/stories260K";

struct Runtimes {
  std::unique_ptr<shardserve::Backend> backend;
  std::unique_ptr<shardserve::StageRuntime> tail;   // layers [1, n): validation only
  std::unique_ptr<shardserve::StageRuntime> whole;  // layers [0, n): runs the model
};

std::unique_ptr<shardserve::StageRuntime> Load(shardserve::Backend* backend, int64_t begin) {
  shardserve::StageSpec spec;
  spec.layer_begin = begin;
  auto stage = shardserve::LoadStage(kModel, spec, {16, 64}, backend);
  if (!stage.ok()) {
    std::fprintf(stderr, "cannot load %s (run from the repository root): %s\n", kModel,
                 stage.status().ToString().c_str());
    std::abort();
  }
  return std::make_unique<shardserve::StageRuntime>(std::move(*stage), /*max_step_tokens=*/64);
}

Runtimes& Get() {
  static Runtimes* r = [] {
    auto* r = new Runtimes;
    r->backend = shardserve::NewCpuBackend({1});
    r->tail = Load(r->backend.get(), 1);
    r->whole = Load(r->backend.get(), 0);
    return r;
  }();
  return *r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardserve::fuzz::Check;
  shardserve::v1::StepPlan plan;
  if (!plan.ParseFromArray(data, static_cast<int>(size))) return 0;
  Runtimes& r = Get();

  auto tail = r.tail->Execute(plan);
  // A plan without sequences only releases (a valid no-op step); any other plan stops at the
  // missing upstream link once it has passed validation.
  Check(!tail.ok() || plan.sequences_size() == 0,
        "a stage without an upstream link succeeds only on plans without sequences");
  const bool valid = tail.ok() || tail.status().code() == absl::StatusCode::kFailedPrecondition;
  if (!valid) {
    Check(tail.status().code() == absl::StatusCode::kInvalidArgument,
          "validation failures are INVALID_ARGUMENT");
  }

  std::vector<uint64_t> touched;
  for (const auto& s : plan.sequences()) touched.push_back(s.sequence_id());
  auto whole = r.whole->Execute(plan);
  Check(whole.ok() == valid, "both stages agree on the plan's validity");
  if (whole.ok()) {
    int sampled = 0;
    for (const auto& s : plan.sequences()) sampled += s.sample() ? 1 : 0;
    Check(whole->tokens_size() == sampled, "one token per sampled sequence");
    for (const auto& t : whole->tokens()) {
      Check(t.token_id() >= 0 && t.token_id() < r.whole->stage().config().vocab_size,
            "sampled token in the vocabulary");
    }
  }
  r.whole->Release(touched);
  return 0;
}
