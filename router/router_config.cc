#include "router/router_config.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/listen.h"
#include "common/status.h"
#include "common/tls_flags.h"
#include "common/wire.h"
#include "router/routing.h"

namespace shardserve {
namespace {

void AddPlacementFlags(CLI::App& app, RouterConfig* c) {
  app.add_option("--workers", c->workers,
                 "worker addresses host:port,... in stage order, or dns:///NAME:PORT (every "
                 "address NAME resolves to, re-resolved every 5 s); more than --stages x "
                 "--replicas are spares (workers leased by another router are skipped)")
      ->required();
  app.add_option("--model", c->model, "model folder (readable by every worker at the same path)")
      ->required();
  app.add_option("--served-model-name", c->served_model_name,
                 "the model's name in the API, what clients send as `model` (default: the "
                 "model folder's name)");
  app.add_option("--stages", c->stages, "stages per pipeline (default: workers / replicas)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--layers", c->layers, "manual split, inclusive ranges: 0-2,3-4");
  app.add_option("--replicas", c->replicas, "pipeline replicas")->check(CLI::Range(1, 1024));
  app.add_option("--max-replicas", c->max_replicas,
                 "add a pipeline replica whenever enough spare workers (announced, listed or "
                 "found by DNS) are free for all its stages, up to this many (0: --replicas)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--max-batch-tokens", c->max_batch_tokens, "tokens per micro-batch")
      ->check(CLI::Range(int64_t{1}, kMaxStepTokens))
      ->capture_default_str();
  app.add_option("--max-seqs", c->max_seqs, "sequences running at once per pipeline")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--kv-blocks", c->kv_blocks, "KV blocks per pipeline (0: sized from --max-seqs)")
      ->check(CLI::Range(int64_t{0}, kMaxKvBlocks));
  app.add_option("--kv-block-size", c->kv_block_size, "tokens per KV block")
      ->check(CLI::Range(1, kMaxKvBlockSize))
      ->capture_default_str();
}

void AddReliabilityFlags(CLI::App& app, RouterConfig* c) {
  app.add_option("--step-timeout-s", c->step_timeout_s,
                 "a step not answered within this marks its pipeline failed; its sequences "
                 "move to another pipeline")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  app.add_option("--failover-wait-s", c->failover_wait_s,
                 "how long sequences of a failed pipeline wait for a pipeline to take them "
                 "before UNAVAILABLE naming the failed worker (a request's deadline ends the "
                 "wait sooner, with the same error)")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  AddTlsFlags(app, &c->tls,
              "PEM certificate: serve the gRPC API over TLS, and present it to workers",
              "PEM CA bundle: verify workers against it (TLS to workers; with their --tls-ca, "
              "mutual TLS)");
  app.add_option("--canary-interval-s", c->canary_interval_s,
                 "an idle pipeline runs a one-token canary step this often, so a hung, draining "
                 "or restarted stage is noticed without traffic (0: never)")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--drain-grace-s", c->drain_grace_s,
                 "on SIGTERM/SIGINT, how long to let admitted streams finish (new requests get "
                 "UNAVAILABLE, health NOT_SERVING) before exiting; a second signal exits at once")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--discovery-timeout-s", c->discovery_timeout_s,
                 "with --workers dns:///NAME:PORT, how long to wait for the name to resolve to "
                 "enough workers")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_flag("--no-prefix-cache", c->no_prefix_cache,
               "do not share the KV blocks of common prompt prefixes between requests");
}

void AddRequestFlags(CLI::App& app, RouterConfig* c) {
  app.add_option("--routing", c->routing,
                 "how replicas are chosen: prefix (longest cached prefix, balanced against "
                 "load) or least-loaded")
      ->capture_default_str();
  app.add_option("--http-listen", c->http_listen,
                 "host:port for the OpenAI-compatible HTTP API and /metrics");
  app.add_option("--http-max-connections", c->http_max_connections,
                 "HTTP connections served at once (a thread each, started as they arrive); more "
                 "wait, accepted, until one closes")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--api-key", c->api_key,
                 "key clients must send as Authorization: Bearer KEY (HTTP header, gRPC metadata); "
                 "prefer the environment variable, which `ps` does not show")
      ->envname("SHARDSERVE_API_KEY");
  app.add_option("--max-queued-requests", c->admission.max_queued_requests,
                 "requests queued or running at once; past it RESOURCE_EXHAUSTED (HTTP 429)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-prompt-tokens", c->admission.max_prompt_tokens,
                 "longest prompt accepted, in tokens (0: the model's context)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--max-tokens-limit", c->admission.max_tokens_limit,
                 "largest max_tokens accepted (0: the model's context)")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--stream-interval", c->stream_interval,
                 "tokens per streamed message (0: adapt to load, 1 per message up to 64 "
                 "streams, then up to 8, each held back at most 50 ms)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  app.add_option("--max-stop-strings", c->admission.max_stop_strings, "stop strings per request")
      ->check(CLI::Range(0, kMaxStopStrings))
      ->capture_default_str();
  app.add_option("--max-receive-message-bytes", c->max_receive_message_bytes,
                 "largest gRPC request message accepted")
      ->check(CLI::Range(int64_t{1} << 10, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--chat-template", c->chat_template,
                 "llama2, llama3, chatml, deepseek-v3, deepseek-r1 or mistral (default: detect)");
  app.add_option("--reasoning-parser", c->reasoning_parser,
                 "split <think>...</think> out of the output (chat prompts, or requests with "
                 "separate_reasoning) into reasoning_text / reasoning_content: deepseek_r1, none, "
                 "or auto = deepseek_r1 when the chat template opens <think> in its generation "
                 "prompt or the vocabulary has <think> and </think> tokens")
      ->check(CLI::IsMember({"auto", "deepseek_r1", "none"}))
      ->capture_default_str();
}

}  // namespace

void AddRouterFlags(CLI::App& app, RouterConfig* c) {
  app.add_option("--listen", c->listen, "host:port for the public gRPC API (port 0: any free port)")
      ->required();
  app.add_option("--port-file", c->port_file,
                 "write the bound --listen port to this file once listening (for launchers)");
  AddClusterAuthFlags(app, &c->cluster_auth);
  AddPlacementFlags(app, c);
  AddReliabilityFlags(app, c);
  AddRequestFlags(app, c);
}

absl::Status RouterConfig::Validate() const {
  RETURN_IF_ERROR(ValidateListenAddresses({{listen, "--listen"}, {http_listen, "--http-listen"}}));
  if (absl::Status s = ParseRoutingPolicy(routing).status(); !s.ok()) return s;
  // It goes into URLs (/v1/models/NAME), JSON and metric labels.
  if (served_model_name.size() > 256 ||
      !std::all_of(served_model_name.begin(), served_model_name.end(),
                   [](char ch) { return ch > ' ' && ch < 0x7f && ch != '"' && ch != '\\'; })) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--served-model-name '", served_model_name,
        "' must be at most 256 printable ASCII characters without spaces, quotes or backslashes"));
  }
  return absl::OkStatus();
}

}  // namespace shardserve
