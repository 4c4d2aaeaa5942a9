#include "worker/worker_config.h"

#include <filesystem>

#include "common/listen.h"
#include "common/status.h"
#include "common/tls_flags.h"
#include "model/cost_model.h"

namespace shardserve {
namespace {

void AddServingFlags(CLI::App& app, WorkerConfig* c) {
  app.add_option("--listen", c->listen, "host:port to serve on (port 0: any free port)")
      ->required();
  app.add_option("--port-file", c->port_file,
                 "once listening, write the bound gRPC port to this file (for --listen :0)");
  app.add_option("--model-root", c->model_root,
                 "only load model folders inside this one (LoadShard paths are resolved, "
                 "symlinks included; default: any folder this process can read)");
  AddClusterAuthFlags(app, &c->cluster_auth);
  app.add_option("--backend", c->backend,
                 "compute backend: cpu, cuda, or sim (a simulated device: steps take the cost "
                 "model's time, see --sim-device)")
      ->check(CLI::IsMember({"cpu", "cuda", "sim"}))
      ->capture_default_str();
  app.add_option("--sim-device", c->sim_device,
                 "with --backend sim: the simulated device (h200, h100, a100-80g, l40s, cpu-here)")
      ->capture_default_str();
  app.add_option("--sim-profile", c->sim_profile,
                 "with --backend sim: a JSON device profile instead of --sim-device "
                 "(docs/SCALING.md lists its fields)");
  app.add_option("--sim-link-latency-us", c->sim_link_latency_us,
                 "with --backend sim: per-hop latency to the next stage, overriding the profile's")
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--sim-seed", c->sim_seed,
                 "with --backend sim: seed of the tokens the simulated last stage emits")
      ->capture_default_str();
  app.add_option("--device", c->device, "GPU index with --backend cuda")->capture_default_str();
  app.add_option("--gpu-memory-fraction", c->gpu_memory_fraction,
                 "share of the GPU's memory for weights, KV pages and workspaces")
      ->check(CLI::Range(0.05, 1.0))
      ->capture_default_str();
  app.add_option("--threads", c->threads, "compute threads")->check(CLI::Range(1, 1024));
  app.add_flag("--f32-activations", c->f32_activations,
               "CPU: multiply BF16 weights with F32 activations, not the faster AVX512-BF16 dot "
               "products that round activations to BF16 as GPUs do");
  app.add_option("--recv-timeout-s", c->recv_timeout_s,
                 "how long a stage waits for the previous stage's activations")
      ->check(CLI::Range(1, 3600));
  app.add_option("--fault-send-delay-ms", c->fault_send_delay_ms,
                 "test hook: delay every activation send by this much")
      ->check(CLI::Range(0, 60000));
  app.add_option("--fault-fail-after-sends", c->fault_fail_after_sends,
                 "test hook: fail activation sends from this one on")
      ->check(CLI::Range(-1, 1 << 30));
  app.add_option("--fault-device-after-steps", c->fault_device_after_steps,
                 "test hook: the device fails (as after a sticky CUDA error) at this step, "
                 "counting steps that carry sequences from 0")
      ->check(CLI::Range(-1, 1 << 30));
}

void AddClusterFlags(CLI::App& app, WorkerConfig* c) {
  app.add_option("--metrics-listen", c->metrics_listen, "host:port for Prometheus /metrics");
  AddTlsFlags(
      app, &c->tls, "PEM certificate: serve TLS, and present it to the next stage",
      "PEM CA bundle: require and verify client certificates signed by it (mutual TLS: only "
      "routers and workers of the cluster may call), and verify the next stage");
  app.add_option("--lease-ttl-s", c->lease_ttl_s,
                 "how long the router that loaded this worker's shard keeps it without sending "
                 "a step (other routers are refused meanwhile)")
      ->check(CLI::Range(0.5, 3600.0))
      ->capture_default_str();
  app.add_option("--router", c->router,
                 "router host:port to announce this worker to, as a spare that replaces an "
                 "unreachable stage (repeated every second)");
  app.add_option("--advertise", c->advertise,
                 "host:port the router reaches this worker at (default: --listen)");
  app.add_option("--drain-grace-s", c->drain_grace_s,
                 "on SIGTERM/SIGINT, how long to wait for routers to move their sequences off "
                 "this worker before exiting (a second signal exits at once)")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
}

}  // namespace

void AddWorkerFlags(CLI::App& app, WorkerConfig* c) {
  AddServingFlags(app, c);
  AddClusterFlags(app, c);
}

absl::StatusOr<SimOptions> WorkerConfig::Sim() const {
  SimOptions sim;
  if (!sim_profile.empty()) {
    ASSIGN_OR_RETURN(sim.profile, ProfileFromFile(sim_profile));
  } else {
    ASSIGN_OR_RETURN(sim.profile, BuiltinProfile(sim_device));
  }
  if (sim_link_latency_us >= 0) sim.profile.link_latency_s = sim_link_latency_us * 1e-6;
  sim.seed = sim_seed;
  return sim;
}

absl::Status WorkerConfig::Validate() const {
  RETURN_IF_ERROR(
      ValidateListenAddresses({{listen, "--listen"}, {metrics_listen, "--metrics-listen"}}));
  if (backend != "sim" && (!sim_profile.empty() || sim_link_latency_us >= 0)) {
    return absl::InvalidArgumentError("--sim-profile and --sim-link-latency-us need --backend sim");
  }
  std::error_code ec;
  if (!model_root.empty() && !std::filesystem::is_directory(model_root, ec)) {
    return absl::InvalidArgumentError("--model-root " + model_root + " is not a folder");
  }
  return absl::OkStatus();
}

}  // namespace shardserve
