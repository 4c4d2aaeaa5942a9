// shardserve-router: the public gRPC API in front of pipeline replicas of workers.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cluster_auth.h"
#include "common/listen.h"
#include "common/logging.h"
#include "common/tls.h"
#include "common/tls_flags.h"
#include "common/wire.h"
#include "router/discovery.h"
#include "router/http_server.h"
#include "router/inference_service.h"
#include "router/kserve_service.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/replica.h"
#include "router/routing.h"
#include "router/worker_registry.h"

namespace shardserve {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "shardserve-router: error: %s\n", message.c_str());
  return 2;
}

int RouterMain(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  CLI::App app{"shardserve-router: serves a model split into pipeline stages across workers"};
  std::string listen, workers_flag, model, layers_flag, chat_template_name;
  int stages = 0, replicas = 1, max_seqs = 64, kv_block_size = 16;
  int64_t max_batch_tokens = 256, kv_blocks = 0;
  app.add_option("--listen", listen, "host:port for the public gRPC API (port 0: any free port)")
      ->required();
  ClusterAuthFlags cluster_auth;
  AddClusterAuthFlags(app, &cluster_auth);
  app.add_option("--workers", workers_flag,
                 "worker addresses host:port,... in stage order, or dns:///NAME:PORT (every "
                 "address NAME resolves to, re-resolved every 5 s); more than --stages x "
                 "--replicas are spares (workers leased by another router are skipped)")
      ->required();
  app.add_option("--model", model, "model folder (readable by every worker at the same path)")
      ->required();
  app.add_option("--stages", stages, "stages per pipeline (default: workers / replicas)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--layers", layers_flag, "manual split, inclusive ranges: 0-2,3-4");
  app.add_option("--replicas", replicas, "pipeline replicas")->check(CLI::Range(1, 1024));
  int max_replicas = 0;
  app.add_option("--max-replicas", max_replicas,
                 "add a pipeline replica whenever enough spare workers (announced, listed or "
                 "found by DNS) are free for all its stages, up to this many (0: --replicas)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--max-batch-tokens", max_batch_tokens, "tokens per micro-batch")
      ->check(CLI::Range(int64_t{1}, kMaxStepTokens))
      ->capture_default_str();
  app.add_option("--max-seqs", max_seqs, "sequences running at once per pipeline")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--kv-blocks", kv_blocks, "KV blocks per pipeline (0: sized from --max-seqs)")
      ->check(CLI::Range(int64_t{0}, kMaxKvBlocks));
  app.add_option("--kv-block-size", kv_block_size, "tokens per KV block")
      ->check(CLI::Range(1, kMaxKvBlockSize))
      ->capture_default_str();
  double step_timeout_s = 10, failover_wait_s = 30;
  app.add_option("--step-timeout-s", step_timeout_s,
                 "a step not answered within this marks its pipeline failed; its sequences "
                 "move to another pipeline")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  app.add_option("--failover-wait-s", failover_wait_s,
                 "how long sequences of a failed pipeline wait for a pipeline to take them "
                 "before UNAVAILABLE naming the failed worker (a request's deadline ends the "
                 "wait sooner, with the same error)")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  TlsFiles tls;
  AddTlsFlags(app, &tls, "PEM certificate: serve the gRPC API over TLS, and present it to workers",
              "PEM CA bundle: verify workers against it (TLS to workers; with their --tls-ca, "
              "mutual TLS)");
  double canary_interval_s = 1;
  app.add_option("--canary-interval-s", canary_interval_s,
                 "an idle pipeline runs a one-token canary step this often, so a hung, draining "
                 "or restarted stage is noticed without traffic (0: never)")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  double drain_grace_s = 30;
  app.add_option("--drain-grace-s", drain_grace_s,
                 "on SIGTERM/SIGINT, how long to let admitted streams finish (new requests get "
                 "UNAVAILABLE, health NOT_SERVING) before exiting; a second signal exits at once")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  double discovery_timeout_s = 300;
  app.add_option("--discovery-timeout-s", discovery_timeout_s,
                 "with --workers dns:///NAME:PORT, how long to wait for the name to resolve to "
                 "enough workers")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  bool no_prefix_cache = false;
  app.add_flag("--no-prefix-cache", no_prefix_cache,
               "do not share the KV blocks of common prompt prefixes between requests");
  std::string routing_flag = "prefix";
  app.add_option("--routing", routing_flag,
                 "how replicas are chosen: prefix (longest cached prefix, balanced against "
                 "load) or least-loaded")
      ->capture_default_str();
  std::string http_listen, api_key;
  app.add_option("--http-listen", http_listen,
                 "host:port for the OpenAI-compatible HTTP API and /metrics");
  app.add_option("--api-key", api_key,
                 "key clients must send as Authorization: Bearer KEY (HTTP header, gRPC metadata)");
  AdmissionLimits admission;
  int64_t max_receive_message_bytes = int64_t{16} << 20;
  app.add_option("--max-queued-requests", admission.max_queued_requests,
                 "requests queued or running at once; past it RESOURCE_EXHAUSTED (HTTP 429)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-prompt-tokens", admission.max_prompt_tokens,
                 "longest prompt accepted, in tokens (0: the model's context)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--max-tokens-limit", admission.max_tokens_limit,
                 "largest max_tokens accepted (0: the model's context)")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--max-stop-strings", admission.max_stop_strings, "stop strings per request")
      ->check(CLI::Range(0, kMaxStopStrings))
      ->capture_default_str();
  app.add_option("--max-receive-message-bytes", max_receive_message_bytes,
                 "largest gRPC request message accepted")
      ->check(CLI::Range(int64_t{1} << 10, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--chat-template", chat_template_name,
                 "llama2, llama3, chatml, deepseek-v3, deepseek-r1 or mistral (default: detect)");
  std::string reasoning_parser_flag = "auto";
  app.add_option("--reasoning-parser", reasoning_parser_flag,
                 "split <think>...</think> out of the output (chat prompts, or requests with "
                 "separate_reasoning) into reasoning_text / reasoning_content: deepseek_r1, none, "
                 "or auto = deepseek_r1 when the chat template opens <think> in its generation "
                 "prompt or the vocabulary has <think> and </think> tokens")
      ->check(CLI::IsMember({"auto", "deepseek_r1", "none"}))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  for (const auto& [address, flag] :
       {std::pair{listen, "--listen"}, std::pair{http_listen, "--http-listen"}}) {
    if (address.empty()) continue;
    if (absl::Status s = ValidateListenAddress(address, flag); !s.ok()) {
      return Fail(std::string(s.message()));
    }
  }
  auto server_credentials = MakeServerCredentials(tls, /*require_client_cert=*/false);
  if (!server_credentials.ok()) return Fail(std::string(server_credentials.status().message()));
  auto channel_credentials = MakeChannelCredentials(tls);
  if (!channel_credentials.ok()) return Fail(std::string(channel_credentials.status().message()));
  SetProcessChannelCredentials(*channel_credentials);
  auto cluster = ResolveClusterAuth(cluster_auth, tls, "shardserve-router");
  if (!cluster.ok()) return Fail(std::string(cluster.status().message()));
  auto routing = ParseRoutingPolicy(routing_flag);
  if (!routing.ok()) return Fail(std::string(routing.status().message()));
  auto config = ModelConfig::FromFile(model + "/config.json");
  if (!config.ok()) return Fail(std::string(config.status().message()));
  auto tokenizer = Tokenizer::Load(model);
  if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));

  std::vector<std::string> workers;
  if (!IsDnsWorkers(workers_flag)) {
    auto listed = ResolveWorkers(workers_flag);
    if (!listed.ok()) return Fail(std::string(listed.status().message()));
    workers = *listed;
  } else {
    // Pods behind a headless Service appear in DNS as they become ready: wait for enough.
    if (stages == 0 && layers_flag.empty()) {
      return Fail(
          "--workers dns:///...: give --stages (or --layers); the number of workers "
          "behind the name changes");
    }
    const int want_stages =
        stages != 0 ? stages
                    : 1 + static_cast<int>(std::count(layers_flag.begin(), layers_flag.end(), ','));
    const int want = want_stages * replicas;
    const absl::Time give_up = absl::Now() + absl::Seconds(discovery_timeout_s);
    std::string last;
    while (true) {
      auto found = ResolveWorkers(workers_flag);
      if (found.ok() && static_cast<int>(found->size()) >= want) {
        workers = *found;
        break;
      }
      const std::string now = found.ok()
                                  ? absl::StrCat(found->size(), " of ", want, " workers resolved")
                                  : std::string(found.status().message());
      if (now != last) LOG(INFO) << workers_flag << ": " << now << "; waiting";
      last = now;
      if (absl::Now() > give_up) {
        return Fail(absl::StrCat(workers_flag, ": ", now, " after ", discovery_timeout_s,
                                 " s (--discovery-timeout-s)"));
      }
      absl::SleepFor(absl::Seconds(1));
    }
  }
  std::vector<LayerRange> ranges;
  if (!layers_flag.empty()) {
    auto parsed = ParseLayerRanges(layers_flag, config->num_layers);
    if (!parsed.ok()) return Fail(std::string(parsed.status().message()));
    ranges = *parsed;
    if (stages != 0 && stages != static_cast<int>(ranges.size())) {
      return Fail("--layers names " + std::to_string(ranges.size()) + " stages but --stages is " +
                  std::to_string(stages));
    }
    stages = ranges.size();
  }
  if (stages == 0) stages = std::max<int>(1, workers.size() / replicas);
  // More workers than the pipelines need are spares (with --stages given).
  if (static_cast<int>(workers.size()) < stages * replicas) {
    return Fail("--workers lists " + std::to_string(workers.size()) + " addresses; " +
                std::to_string(stages) + " stages x " + std::to_string(replicas) +
                " replicas need " + std::to_string(stages * replicas));
  }
  if (ranges.empty()) {
    auto balanced = BalancedPlacement(*config, stages);
    if (!balanced.ok()) return Fail(std::string(balanced.status().message()));
    ranges = *balanced;
  }

  const int64_t context = config->max_position_embeddings;
  const int64_t blocks_per_context = (context + kv_block_size - 1) / kv_block_size;
  if (kv_blocks == 0) kv_blocks = DefaultKvBlocks(*config, ranges, kv_block_size, max_seqs);
  if (kv_blocks < blocks_per_context) {
    return Fail("--kv-blocks " + std::to_string(kv_blocks) + " cannot hold one full context (" +
                std::to_string(blocks_per_context) + " blocks)");
  }

  std::optional<ChatTemplate> chat_template;
  {
    auto t = chat_template_name.empty()
                 ? ChatTemplate::Detect((*tokenizer)->chat_template(), (*tokenizer)->bos_token(),
                                        (*tokenizer)->eos_token())
                 : ChatTemplate::FromName(chat_template_name, (*tokenizer)->bos_token(),
                                          (*tokenizer)->eos_token());
    if (t.ok()) {
      chat_template = *t;
    } else if (!chat_template_name.empty()) {
      return Fail(std::string(t.status().message()));
    } else {
      auto fallback =
          ChatTemplate::FromName("chatml", (*tokenizer)->bos_token(), (*tokenizer)->eos_token());
      if (fallback.ok()) chat_template = *fallback;
      LOG(INFO) << "no chat template detected (" << t.status().message() << "); using chatml";
    }
  }

  absl::StatusOr<ReasoningParserKind> reasoning_parser;
  {
    bool template_opens = false;
    if (chat_template.has_value()) {
      auto probe = chat_template->Render({{"user", "hi"}}, /*add_generation_prompt=*/true);
      template_opens = probe.ok() && PromptOpensReasoning(*probe);
    }
    const bool vocabulary_has_tags =
        (*tokenizer)->PieceToId("<think>") >= 0 && (*tokenizer)->PieceToId("</think>") >= 0;
    reasoning_parser =
        ResolveReasoningParser(reasoning_parser_flag, template_opens, vocabulary_has_tags);
    if (!reasoning_parser.ok()) return Fail(std::string(reasoning_parser.status().message()));
    LOG(INFO) << "reasoning parser: " << ReasoningParserName(*reasoning_parser);
  }

  ReplicaOptions options;
  options.pipeline.model_path = std::filesystem::absolute(model).string();
  options.pipeline.num_layers = config->num_layers;
  options.pipeline.kv_block_size = kv_block_size;
  options.pipeline.kv_num_blocks = static_cast<int32_t>(kv_blocks);
  options.pipeline.max_step_tokens = static_cast<int32_t>(max_batch_tokens);
  options.prefix_caching = !no_prefix_cache;
  options.step_timeout = absl::Seconds(step_timeout_s);
  options.failover_wait = absl::Seconds(failover_wait_s);
  options.canary_interval = absl::Seconds(canary_interval_s);
  // Spare workers announce themselves (shardserve-worker --router); the --workers are in use.
  WorkerRegistry registry;
  for (size_t i = 0; i < workers.size(); ++i) {
    if (static_cast<int>(i) < stages * replicas) {
      registry.Claim(workers[i]);
    } else {
      registry.AddListed(workers[i]);
    }
  }
  // This router's name in the workers' leases: routers sharing workers never double-book one.
  options.pipeline.owner = absl::StrCat(listen, "/", getpid(), "/", absl::ToUnixNanos(absl::Now()));
  options.registry = &registry;
  options.scheduler.max_batch_tokens = max_batch_tokens;
  options.scheduler.max_seqs = max_seqs;
  options.scheduler.max_in_flight = stages;
  options.scheduler.vocab_size = config->vocab_size;
  options.tokenizer = tokenizer->get();

  std::vector<std::unique_ptr<Replica>> owned;
  std::vector<Replica*> replica_ptrs;
  for (int r = 0; r < replicas; ++r) {
    std::vector<StageEndpoint> endpoints;
    for (int s = 0; s < stages; ++s) endpoints.push_back({workers[r * stages + s], ranges[s]});
    owned.push_back(std::make_unique<Replica>(r, std::move(endpoints), options));
    replica_ptrs.push_back(owned.back().get());
  }
  std::string name = std::filesystem::path(model).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::path(model).lexically_normal().parent_path().filename();
  InferenceServiceImpl service(name, *config, tokenizer->get(), chat_template, replica_ptrs);
  RouterMetrics metrics;
  service.set_metrics(&metrics);
  admission.api_key = api_key;
  service.set_admission_limits(admission);
  service.set_reasoning_parser(*reasoning_parser);
  service.set_routing(*routing);
  service.set_registry(&registry);
  std::unique_ptr<HttpServer> http;
  if (!http_listen.empty()) {
    http = std::make_unique<HttpServer>(
        &service, tokenizer->get(), &metrics,
        HttpServerOptions{
            .api_key = api_key,
            // JSON may spell a byte as \uXXXX (6 bytes).
            .max_body_bytes =
                std::min<int64_t>(int64_t{64} << 20, 6 * service.max_prompt_bytes() + (1 << 20)),
        });
    if (absl::Status s = http->Start(http_listen); !s.ok()) return Fail(std::string(s.message()));
    LOG(INFO) << "OpenAI-compatible HTTP and /metrics on " << http_listen << " (port "
              << http->port() << ")";
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  ConfigureExclusivePort(&builder);
  builder.AddListeningPort(listen, *server_credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_receive_message_bytes));
  builder.RegisterService(&service);
  KServeService kserve(&service);
  builder.RegisterService(&kserve);
  RegistrationService registration(&registry, absl::Seconds(1), &*cluster);
  builder.RegisterService(&registration);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    if (http != nullptr) http->Stop();
    return Fail(std::string(CannotListen("--listen", listen).message()));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  for (auto& r : owned) r->Start();
  LOG(INFO) << "shardserve-router on " << listen << " (port " << port << "): model " << name << ", "
            << replicas << " x " << stages << " stages, layers " << FormatLayerRanges(ranges)
            << ", " << kv_blocks << " KV blocks per pipeline";

  std::atomic<bool> stopping{false};
  std::thread health_thread([&] {
    bool last = false;
    bool first = true;
    while (!stopping) {
      const bool serving = service.serving();
      if (serving != last || first) {
        health->SetServingStatus(serving);
        LOG(INFO) << "health: " << (serving ? "SERVING" : "NOT_SERVING");
        last = serving;
        first = false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });

  // Scale out: a new replica from free spares, while under --max-replicas. Only this thread adds
  // to `owned` until it is joined.
  std::thread scaler;
  if (max_replicas > replicas) {
    scaler = std::thread([&] {
      while (!stopping) {
        for (int i = 0; i < 20 && !stopping; ++i) absl::SleepFor(absl::Milliseconds(50));
        if (stopping || static_cast<int>(owned.size()) >= max_replicas) continue;
        if (static_cast<int>(registry.Spares().size()) < stages) continue;
        std::vector<StageEndpoint> endpoints;
        for (int st = 0; st < stages; ++st) {
          auto spare = registry.ClaimSpare();
          if (!spare) break;
          endpoints.push_back({*spare, ranges[st]});
        }
        if (static_cast<int>(endpoints.size()) < stages) {
          for (const StageEndpoint& e : endpoints) registry.Release(e.address);
          continue;
        }
        const int index = static_cast<int>(owned.size());
        std::vector<std::string> addresses;
        for (const StageEndpoint& e : endpoints) addresses.push_back(e.address);
        LOG(INFO) << "spare workers " << absl::StrJoin(addresses, ",") << " make pipeline "
                  << index;
        owned.push_back(std::make_unique<Replica>(index, std::move(endpoints), options));
        service.AddReplica(owned.back().get());
        owned.back()->Start();
      }
    });
  }

  // A DNS name is resolved again every 5 s: workers that appear join the pool as spares.
  std::thread discovery_thread;
  if (IsDnsWorkers(workers_flag)) {
    discovery_thread = std::thread([&] {
      while (!stopping) {
        for (int i = 0; i < 100 && !stopping; ++i) absl::SleepFor(absl::Milliseconds(50));
        auto found = ResolveWorkers(workers_flag);
        if (!found.ok()) continue;
        for (const std::string& w : *found) registry.AddListed(w);
      }
    });
  }

  int sig = 0;
  sigwait(&signals, &sig);
  LOG(INFO) << "shardserve-router: signal " << sig << ", draining " << service.admitted()
            << " admitted requests (up to " << drain_grace_s << " s)";
  service.StartDraining();
  health->SetServingStatus(false);
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(drain_grace_s);
  const timespec poll = {0, 50 * 1000 * 1000};
  while (service.admitted() > 0 && std::chrono::steady_clock::now() < give_up) {
    if (sigtimedwait(&signals, nullptr, &poll) > 0) break;  // a second signal: now
  }
  LOG(INFO) << "shardserve-router: shutting down, " << service.admitted() << " requests unfinished";
  stopping = true;
  health_thread.join();
  if (discovery_thread.joinable()) discovery_thread.join();
  if (scaler.joinable()) scaler.join();
  health->SetServingStatus(false);
  if (http != nullptr) http->Stop();
  for (auto& r : owned) r->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) { return shardserve::RouterMain(argc, argv); }
