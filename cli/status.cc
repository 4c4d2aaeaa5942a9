// `shardserve status --server ADDR [--watch] [--json]`: the router's GetClusterStatus as a table
// in the terminal (the /console page's view): pipelines and their stages, load, latency and
// the last events.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/complete.h"
#include "common/cli_flags.h"
#include "common/tls.h"
#include "google/protobuf/util/json_util.h"
#include "shardserve/v1/inference.grpc.pb.h"

namespace shardserve {
namespace {

std::atomic<bool> g_interrupted{false};

void OnInterrupt(int) { g_interrupted = true; }

// Text from the server (error messages, event sentences) without control characters, so that
// nothing it says can move the cursor or recolour the terminal.
std::string Printable(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

std::string Ms(double seconds) { return absl::StrFormat("%.1f ms", seconds * 1e3); }

std::string Uptime(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string Percent(double fraction) { return absl::StrFormat("%.0f%%", fraction * 100); }

// The table: one block per pipeline, one row per stage, then the last `events` events.
std::string Render(const v1::GetClusterStatusResponse& s, int events) {
  std::string out;
  const v1::ClusterLoad& load = s.load();
  int ready = 0;
  for (const v1::PipelineStatus& p : s.pipelines()) ready += p.ready() ? 1 : 0;
  absl::StrAppendFormat(&out, "model %s, up %s: %d of %d pipelines ready, %d spare workers\n",
                        Printable(s.model()), Uptime(s.uptime_seconds()), ready, s.pipelines_size(),
                        s.spare_workers_size());
  absl::StrAppendFormat(&out,
                        "load: %.1f tokens/s, %.2f requests/s, %d running, %d waiting; TTFT p50 %s "
                        "p99 %s; ITL p50 %s p99 %s\n",
                        load.tokens_per_second(), load.requests_per_second(), load.running(),
                        load.waiting(), Ms(load.ttft_p50_seconds()), Ms(load.ttft_p99_seconds()),
                        Ms(load.itl_p50_seconds()), Ms(load.itl_p99_seconds()));
  for (const v1::PipelineStatus& p : s.pipelines()) {
    absl::StrAppendFormat(
        &out, "\npipeline %d: %s; %d running, %d waiting; KV %d/%d (%s)", p.index(),
        p.ready() ? "ready" : "down (" + Printable(p.last_error()) + ")", p.running(), p.waiting(),
        p.kv_blocks_used(), p.kv_blocks_total(),
        Percent(p.kv_blocks_total() == 0
                    ? 0.0
                    : static_cast<double>(p.kv_blocks_used()) / p.kv_blocks_total()));
    absl::StrAppendFormat(&out, "; %d failovers, %d preemptions\n", p.failovers(), p.preemptions());
    absl::StrAppendFormat(&out, "  %-6s %-22s %-7s %-16s %-10s %6s %8s %19s %11s\n", "stage",
                          "worker", "layers", "device", "health", "busy", "tok/s", "step p50/p99",
                          "KV");
    for (const v1::StageStatus& st : p.stages()) {
      std::string health = Printable(st.health());
      if (!st.healthy() && health.rfind("unreachable", 0) == 0) health = "unreachable";
      const std::string mark = p.bottleneck_stage() == st.index() && st.busy_fraction() > 0
                                   ? absl::StrCat(st.index(), " *")
                                   : std::to_string(st.index());
      absl::StrAppendFormat(
          &out, "  %-6s %-22s %-7s %-16s %-10s %6s %8.0f %19s %11s\n", mark,
          Printable(st.address()), st.layers(),
          Printable(absl::StrCat(st.backend(), st.device().empty() ? "" : " ", st.device())),
          health, Percent(st.busy_fraction()), st.tokens_per_second(),
          absl::StrFormat("%.2f/%.2f ms", st.step_seconds_p50() * 1e3, st.step_seconds_p99() * 1e3),
          absl::StrCat(st.kv_blocks_used(), "/", st.kv_blocks_total()));
    }
  }
  bool any_bottleneck = false;
  for (const v1::PipelineStatus& p : s.pipelines()) {
    any_bottleneck |= p.bottleneck_stage() >= 0;
  }
  if (any_bottleneck) out += "  (* the pipeline's bottleneck: its busiest stage)\n";
  if (s.spare_workers_size() > 0) {
    absl::StrAppend(&out, "\nspare workers: ", Printable(absl::StrJoin(s.spare_workers(), ", ")),
                    "\n");
  }
  const int first = std::max(0, s.events_size() - events);
  if (s.events_size() > 0) {
    absl::StrAppendFormat(&out, "\nlast %d events:\n", s.events_size() - first);
  }
  for (int i = first; i < s.events_size(); ++i) {
    const v1::ClusterEvent& e = s.events(i);
    const absl::Time t = absl::FromUnixMicros(static_cast<int64_t>(e.time_unix() * 1e6));
    absl::StrAppendFormat(&out, "  %s  %-16s %s\n",
                          absl::FormatTime("%H:%M:%S", t, absl::LocalTimeZone()),
                          Printable(e.kind()), Printable(e.message()));
  }
  return out;
}

}  // namespace

int StatusMain(int argc, char** argv) {
  CLI::App app{
      "Shows a router's cluster: pipelines and their stages (worker, layers, device, "
      "health, busy fraction, step times, KV), load, latency and the last events. The "
      "router's /console page shows the same.",
      "shardserve status"};
  std::string server, api_key;
  bool watch = false, json = false;
  double interval_s = 2;
  int events = 10;
  TlsFiles tls;
  app.add_option("--server", server, "router gRPC address host:port")->required();
  app.add_flag("--watch", watch, "refresh until Ctrl-C");
  app.add_option("--interval-s", interval_s, "seconds between refreshes with --watch")
      ->check(CLI::Range(0.2, 3600.0))
      ->capture_default_str();
  app.add_option("--events", events, "events to show")
      ->check(CLI::Range(0, 50))
      ->capture_default_str();
  app.add_flag("--json", json, "print the status as one JSON object (GetClusterStatus)");
  app.add_option("--api-key", api_key,
                 "sent as authorization: Bearer KEY (default: $SHARDSERVE_API_KEY)");
  AddClientTlsFlags(app, &tls);
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  if (!UseClientTls(tls)) return 2;
  if (absl::Status s = CheckServerAddress(server); !s.ok()) return FailWith(s);
  const std::string key = ApiKeyOrEnv(api_key);
  auto stub =
      v1::InferenceService::NewStub(grpc::CreateChannel(server, ProcessChannelCredentials()));
  if (watch) std::signal(SIGINT, OnInterrupt);
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
    v1::GetClusterStatusRequest request;
    v1::GetClusterStatusResponse status;
    const grpc::Status s = stub->GetClusterStatus(&context, request, &status);
    std::string text;
    if (!s.ok()) {
      // Once: the error and exit 2. --watch: say so and try again (a router restarting).
      if (!watch) return FailWith(ExplainFailure(server, s));
      text = absl::StrCat("error: ", Printable(ExplainFailure(server, s).ToString()),
                          "\n(retrying every ", interval_s, " s; Ctrl-C to stop)\n");
    } else if (json) {
      google::protobuf::util::JsonPrintOptions options;
      options.preserve_proto_field_names = true;
      options.always_print_primitive_fields = true;
      if (!google::protobuf::util::MessageToJsonString(status, &text, options).ok()) {
        return FailWith(absl::InternalError("cannot write the status as JSON"));
      }
      text += "\n";
    } else {
      text = Render(status, events);
    }
    // --watch on a terminal: clear the screen and redraw in place.
    if (watch && !json) std::fputs("\033[H\033[2J", stdout);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    if (!watch) return 0;
    const absl::Time next = absl::Now() + absl::Seconds(interval_s);
    while (absl::Now() < next && !g_interrupted) absl::SleepFor(absl::Milliseconds(50));
    if (g_interrupted) return 0;
  }
}

}  // namespace shardserve
