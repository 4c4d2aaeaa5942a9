// The worker's configuration: every flag of shardserve-worker, parsed by CLI11 and checked before
// anything starts (WorkerConfig::Validate). Flag names, defaults and help texts are the
// documented ones (README).
#ifndef SHARDSERVE_WORKER_WORKER_CONFIG_H_
#define SHARDSERVE_WORKER_WORKER_CONFIG_H_

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "common/cluster_auth.h"
#include "common/tls.h"
#include "model/sim_stage.h"

namespace shardserve {

struct WorkerConfig {
  std::string listen;
  std::string port_file;  // written with the bound port once listening
  std::string metrics_listen;
  std::string model_root;  // LoadShard paths must lie inside it ("" : anywhere)
  TlsFiles tls;
  ClusterAuthFlags cluster_auth;
  std::string backend = "cpu";
  std::string sim_device = "h200";
  std::string sim_profile;
  double sim_link_latency_us = -1;  // < 0: the profile's
  uint64_t sim_seed = 0;
  int device = 0;
  double gpu_memory_fraction = 0.9;
  bool f32_activations = false;  // CPU: no AVX512-BF16 dot products for BF16 weights
  int threads = 1;
  int recv_timeout_s = 30;
  double lease_ttl_s = 10;
  double drain_grace_s = 30;
  std::string router;     // announce to this router as a spare
  std::string advertise;  // the address announced ("" : --listen)
  // Test hooks: faults on the link to the next stage, and of the device.
  int fault_send_delay_ms = 0;
  int fault_fail_after_sends = -1;
  // Test hook: the device fails at this step (-1: never).
  int fault_device_after_steps = -1;

  // INVALID_ARGUMENT naming the flag for values CLI11's checks cannot see.
  absl::Status Validate() const;
  // With --backend sim: the device profile and seed from --sim-device / --sim-profile.
  absl::StatusOr<SimOptions> Sim() const;
};

// Adds every shardserve-worker flag, writing into `config`.
void AddWorkerFlags(CLI::App& app, WorkerConfig* config);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WORKER_CONFIG_H_
