// The router's configuration: every flag of shardserve-router, parsed by CLI11 and checked
// before anything starts (RouterConfig::Validate). Flag names, defaults and help texts are the
// documented ones (README, docs/API.md).
#ifndef SHARDSERVE_ROUTER_ROUTER_CONFIG_H_
#define SHARDSERVE_ROUTER_ROUTER_CONFIG_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "common/cluster_auth.h"
#include "common/tls.h"
#include "router/inference_service.h"

namespace shardserve {

struct RouterConfig {
  // Where it listens, and who may call the cluster.
  std::string listen;
  std::string port_file;  // written with the bound gRPC port once listening
  std::string http_listen;
  int http_max_connections = 2048;
  TlsFiles tls;
  ClusterAuthFlags cluster_auth;
  std::string api_key;
  // The model and its split into pipelines.
  std::string model;
  std::string served_model_name;  // the model's name in the API; "": the model folder's name
  std::string workers;            // host:port,... or dns:///NAME:PORT
  std::string layers;             // manual split "0-2,3-4", or "" for balanced
  int stages = 0;                 // 0: workers / replicas
  int replicas = 1;
  int max_replicas = 0;  // 0: --replicas
  // Batching and the KV cache.
  int64_t max_batch_tokens = 256;
  int max_seqs = 64;
  int stream_interval = 0;  // tokens per streamed message; 0: adaptive
  int64_t kv_blocks = 0;    // 0: sized from --max-seqs
  int kv_block_size = 16;
  bool no_prefix_cache = false;
  std::string routing = "prefix";
  // Reliability.
  double step_timeout_s = 10;
  double failover_wait_s = 30;
  double canary_interval_s = 1;
  double drain_grace_s = 30;
  double discovery_timeout_s = 300;
  // Requests.
  AdmissionLimits admission;
  int64_t max_receive_message_bytes = int64_t{16} << 20;
  std::string chat_template;  // "" : detect
  std::string reasoning_parser = "auto";

  // INVALID_ARGUMENT naming the flag for values CLI11's checks cannot see (addresses, names).
  absl::Status Validate() const;
};

// Adds every shardserve-router flag, writing into `config`.
void AddRouterFlags(CLI::App& app, RouterConfig* config);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_ROUTER_CONFIG_H_
