#include "cli/up.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/complete.h"
#include "common/cli_flags.h"
#include "common/cluster_auth.h"
#include "common/listen.h"
#include "nlohmann/json.hpp"
#include "shardserve/v1/inference.grpc.pb.h"

extern char** environ;

namespace shardserve {
namespace {

namespace fs = std::filesystem;

fs::path SelfDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : exe.parent_path();
}

bool IsModelFolder(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p / "config.json", ec);
}

// Finds the default model; empty when there is none.
std::string FindDefaultModel() {
  if (const char* env = std::getenv("SHARDSERVE_MODEL"); env != nullptr && *env != '\0') return env;
  const fs::path repo = SelfDir().parent_path().parent_path();  // <repo>/build/bin
  for (const fs::path& p :
       {fs::path("../shared/models/stories260K"), repo / "../shared/models/stories260K"}) {
    if (IsModelFolder(p)) return fs::weakly_canonical(p).string();
  }
  std::error_code ec;
  if (IsModelFolder("models")) return fs::absolute("models").string();
  if (fs::is_directory("models", ec)) {
    for (const auto& entry : fs::directory_iterator("models", ec)) {
      if (IsModelFolder(entry.path())) return fs::absolute(entry.path()).string();
    }
  }
  return "";
}

// Starts `args` with stdout and stderr appended to `log` ("" keeps the terminal).
pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!log.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  return pid;
}

// A process `up` started: a worker or the router, its output appended to `log`. Members
// default-initialised, so designated initializers may leave any of them out.
struct Child {
  std::string name{};  // "worker 3", "router": how messages name it
  pid_t pid = -1;
  fs::path log{};
  std::streamoff scanned = 0;  // bytes of `log` already looked at
  std::string partial{};       // an unfinished last line
  bool exited = false;
  int status = 0;  // waitpid's, once exited
};

// Sends SIGTERM to every child still running, SIGKILLs those still there after 5 s and reaps
// them all.
void StopAll(std::vector<Child>& children) {
  for (Child& c : children) {
    if (!c.exited) kill(c.pid, SIGTERM);
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  for (Child& c : children) {
    while (!c.exited) {
      const pid_t r = waitpid(c.pid, &c.status, WNOHANG);
      if (r == c.pid || r < 0) {
        c.exited = true;
        break;
      }
      if (absl::Now() > give_up) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &c.status, 0);
        c.exited = true;
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
}

// "W 12:00:00.000 replica.cc:132] message" -> "message"; other lines as they are.
std::string WithoutLogPrefix(std::string line) {
  if (line.size() > 2 && std::isupper(static_cast<unsigned char>(line[0])) && line[1] == ' ') {
    if (const size_t bracket = line.find("] "); bracket != std::string::npos && bracket < 64) {
      line = line.substr(bracket + 2);
    }
  }
  // The router says it keeps retrying; `up` does not.
  if (const size_t retry = line.find(" (retrying with backoff"); retry != std::string::npos) {
    line = line.substr(0, retry);
  }
  return std::string(absl::StripAsciiWhitespace(line));
}

// A line that means the cluster will not come up by itself: any error (start-up errors of the
// router and worker are "...: error: ...") and the router's report of a stage that cannot load
// its shard or link to the next one (it retries those forever).
// gRPC's own log lines ("E1205 02:48:33.077883137   16796 chttp2_server.cc:1045] ...") are not:
// what they report, the process says again in its own words (e.g. a port it cannot bind).
bool IsFailureLine(const std::string& line) {
  const bool grpc_line = line.size() > 6 && std::strchr("DIWEF", line[0]) != nullptr &&
                         std::all_of(line.begin() + 1, line.begin() + 5,
                                     [](char ch) { return std::isdigit(ch) != 0; }) &&
                         line[5] == ' ';
  if (grpc_line) return false;
  return absl::StrContains(absl::AsciiStrToLower(line), "error") ||
         absl::StrContains(line, "cannot load its shard") ||
         absl::StrContains(line, "cannot link to the next stage");
}

// Reads what `child` logged since the last call; the first failure line in it, if any. The
// unfinished last line is held back until it ends, or taken as it is once the child has exited.
std::optional<std::string> ScanLog(Child& child) {
  std::ifstream in(child.log, std::ios::binary);
  if (!in) return std::nullopt;
  in.seekg(child.scanned);
  std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  child.scanned += static_cast<std::streamoff>(chunk.size());
  std::string text = child.partial + chunk;
  child.partial.clear();
  std::optional<std::string> found;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) {
      if (!child.exited) {
        child.partial = text.substr(begin);
        break;
      }
      end = text.size();
    }
    const std::string line = text.substr(begin, end - begin);
    if (!found.has_value() && IsFailureLine(line)) found = WithoutLogPrefix(line);
    begin = end + 1;
  }
  return found;
}

// The last non-empty line of a log file, without the logger's prefix.
std::string LastLine(const fs::path& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return WithoutLogPrefix(last);
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "exited";
}

// Why the cluster cannot come up, as told by one of its processes.
struct Failure {
  std::string message;  // "worker 1: shardserve-worker: error: ..."
  int exit_code = 1;    // 2 when the input (flags, model files) is at fault
};

// Reaps exited children and reads new log lines: the first failure line any child logged, else
// the first child that exited (it should not, before `up` stops it).
std::optional<Failure> CheckChildren(std::vector<Child>& children) {
  for (Child& c : children) {
    if (!c.exited && waitpid(c.pid, &c.status, WNOHANG) == c.pid) c.exited = true;
  }
  // Every log is read to its end, so that the next call starts from new lines only.
  std::optional<Failure> failure;
  for (Child& c : children) {
    std::optional<std::string> line = ScanLog(c);
    if (line.has_value() && !failure.has_value()) {
      failure = Failure{absl::StrCat(c.name, ": ", *line), 1};
      const bool bad_input = (c.exited && WIFEXITED(c.status) && WEXITSTATUS(c.status) == 2) ||
                             absl::StrContains(*line, "cannot load its shard");
      if (bad_input) failure->exit_code = 2;
    }
  }
  if (failure.has_value()) return failure;
  for (Child& c : children) {
    if (!c.exited) continue;
    std::string message = absl::StrCat(c.name, ": ", DescribeExit(c.status));
    if (const std::string last = LastLine(c.log); !last.empty()) {
      absl::StrAppend(&message, ": ", last);
    }
    return Failure{message, WIFEXITED(c.status) && WEXITSTATUS(c.status) == 2 ? 2 : 1};
  }
  return std::nullopt;
}

// Where a local client reaches a server listening on `listen` (host:port, port 0 allowed) that
// bound `port`: a wildcard host is reached on loopback.
std::string ConnectAddress(const std::string& listen, int port) {
  auto hp = SplitHostPort(listen, "--listen");
  std::string host = hp.ok() ? hp->first : "127.0.0.1";
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return absl::StrCat(host, ":", port);
}

// The port in a --port-file: 0 while it is not there (yet), -1 when unreadable.
int ReadPortFile(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return 0;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int port = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) || port < 1 || port > 65535) {
    return -1;
  }
  return port;
}

// SIGINT or SIGTERM, waiting at most `timeout` for one (the caller has them blocked).
bool Interrupted(const sigset_t& signals, absl::Duration timeout) {
  const timespec wait = absl::ToTimespec(timeout);
  // SIGCHLD (or the time running out) returns at once: the caller looks at its children.
  const int sig = sigtimedwait(&signals, nullptr, &wait);
  return sig == SIGINT || sig == SIGTERM;
}

struct UpOptions {
  int workers = 2, threads = 0, max_tokens = 128;
  float temperature = 0.8f;
  std::string model, listen = "127.0.0.1:50051", http_listen, prompt, layers;
  std::string api_key;  // --api-key, else $SHARDSERVE_API_KEY
  std::string log_dir;  // "": a fresh folder under the temp directory
  bool keep_logs = false;
  double ready_timeout_s = 300;
  std::vector<std::string> router_args;  // after `--`
};

// "1 worker", "2 workers".
std::string Workers(int n) { return absl::StrCat(n, n == 1 ? " worker" : " workers"); }

// The port a process logged on its line with `marker` ("metrics on 127.0.0.1:0 (port 41234)"),
// or 0.
int LoggedPort(const fs::path& log, const std::string& marker) {
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    const size_t at = line.find(marker);
    const size_t port = line.find("(port ", at == std::string::npos ? 0 : at);
    if (at == std::string::npos || port == std::string::npos) continue;
    int value = 0;
    if (absl::SimpleAtoi(line.substr(port + 6, line.find(')', port) - port - 6), &value)) {
      return value;
    }
  }
  return 0;
}

// The model's layer count from its config.json, or 0 when unreadable.
int ModelLayers(const std::string& model) {
  std::ifstream in(fs::path(model) / "config.json");
  auto config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.contains("num_hidden_layers") ||
      !config["num_hidden_layers"].is_number_integer()) {
    return 0;
  }
  return config["num_hidden_layers"].get<int>();
}

void AddUpFlags(CLI::App& app, UpOptions* o) {
  app.add_option("--workers", o->workers, "pipeline stages (one worker each)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--model", o->model,
                 "Hugging Face model folder (default: $SHARDSERVE_MODEL, "
                 "../shared/models/stories260K, models/, else a small synthetic model)");
  app.add_option("--listen", o->listen, "router gRPC address host:port (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--http-listen", o->http_listen,
                 "router OpenAI-compatible HTTP address host:port (default: no HTTP)");
  app.add_option("--threads", o->threads, "compute threads per worker (0: CPUs / workers)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--layers", o->layers, "manual layer split, e.g. 0-2,3-4 (default: balanced)");
  app.add_option("--prompt", o->prompt, "stream one completion once ready, then stop");
  app.add_option("--max-tokens", o->max_tokens, "tokens to generate for --prompt")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--temperature", o->temperature, "sampling temperature for --prompt (0: greedy)")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--ready-timeout-s", o->ready_timeout_s, "how long to wait for SERVING")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  app.add_option("--api-key", o->api_key,
                 "the router's --api-key: clients must send it (default: $SHARDSERVE_API_KEY)");
  app.add_option("--log-dir", o->log_dir,
                 "folder for the processes' logs and port files (default: a new folder in the "
                 "temp directory)");
  app.add_flag("--keep-logs", o->keep_logs,
               "keep the log folder after a clean stop (it is always kept after a failure)");
  app.footer(
      "Flags after `--` go to the router as they are: shardserve up -- --max-seqs 128 "
      "--chat-template FILE.\n"
      "Workers listen on ports the system picks (127.0.0.1:0), with /metrics on another, and "
      "load only the model folder (--model-root); the cluster's processes share a fresh secret "
      "(--cluster-secret-file) written into the log folder and removed at the end. If any of "
      "them logs an error or exits before the cluster serves, that line is printed and "
      "everything stops.");
}

// The local cluster `up` runs: its folder (logs, port files, the secret), its processes and the
// signals it waits for. Each step returns an exit code when `up` must stop there.
class LocalCluster {
 public:
  LocalCluster(UpOptions o, const sigset_t& signals)
      : o_(std::move(o)), signals_(signals), tty_(isatty(STDERR_FILENO)) {}

  std::optional<int> Prepare();
  std::optional<int> StartWorkers(std::vector<std::string>* addresses);
  std::optional<int> StartRouter(const std::vector<std::string>& addresses);
  std::optional<int> WaitServing();
  int RunPrompt();
  int ServeUntilInterrupted();

 private:
  std::optional<int> CheckBinaries();
  std::optional<int> ChooseModel();
  // Stops every child; the secret goes with the cluster, the logs stay.
  void Stop() {
    StopAll(children_);
    std::error_code ec;
    fs::remove(secret_file_, ec);
  }
  int Fail(const Failure& f) {
    ClearProgress();
    std::fprintf(stderr, "shardserve up: %s\n", f.message.c_str());
    Stop();
    std::fprintf(stderr, "shardserve up: stopped the cluster (logs in %s)\n", run_dir_.c_str());
    return f.exit_code;
  }
  // A clean end: the log folder goes unless --keep-logs (or the user named it).
  int Finish(int exit_code) {
    Stop();
    if (exit_code != 0 || o_.keep_logs || !o_.log_dir.empty()) {
      std::fprintf(stderr, "shardserve up: logs in %s\n", run_dir_.c_str());
      return exit_code;
    }
    std::error_code ec;
    fs::remove_all(run_dir_, ec);
    return exit_code;
  }
  int Interrupt() {
    ClearProgress();
    Stop();
    std::fprintf(stderr, "shardserve up: interrupted before the cluster served\n");
    return 1;
  }
  bool Start(const std::string& name, std::vector<std::string> args, const fs::path& log) {
    args.insert(args.end(), {"--cluster-secret-file", secret_file_.string()});
    const pid_t p = Spawn(args, log.string());
    if (p <= 0) return false;
    children_.push_back(Child{.name = name, .pid = p, .log = log});
    return true;
  }
  // Progress on a terminal only; piped output stays clean.
  void Progress(const char* what) {
    if (!tty_) return;
    std::fprintf(stderr, "\r\033[K%s on %s... %.0f s", what, Workers(o_.workers).c_str(),
                 absl::ToDoubleSeconds(absl::Now() - started_));
  }
  void ClearProgress() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }
  fs::path RouterPortFile() const { return run_dir_ / "router.port"; }
  void PrintBanner() const;

  UpOptions o_;
  const sigset_t signals_;
  const bool tty_;
  fs::path bin_, run_dir_, secret_file_;
  std::string router_bin_, worker_bin_;
  std::string address_;  // where the router answers, once its --port-file says it listens
  std::vector<std::string> addresses_;  // the workers', in stage order
  std::vector<Child> children_;
  absl::Time started_;
};

std::optional<int> LocalCluster::CheckBinaries() {
  bin_ = SelfDir();
  router_bin_ = (bin_ / "shardserve-router").string();
  worker_bin_ = (bin_ / "shardserve-worker").string();
  for (const std::string& b : {router_bin_, worker_bin_}) {
    if (access(b.c_str(), X_OK) != 0) {
      std::fprintf(stderr, "error: %s not found next to this executable; build it first\n",
                   b.c_str());
      return 1;
    }
  }
  // Port 0 is fine: the router reports the port it bound in its --port-file.
  if (absl::Status s = ValidateListenAddress(o_.listen, "--listen"); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (!o_.model.empty() && !IsModelFolder(o_.model)) {
    std::error_code ec;
    std::fprintf(stderr, "error: --model %s: %s\n", o_.model.c_str(),
                 fs::exists(o_.model, ec) ? "not a model folder (no config.json in it)"
                                          : "no such file or folder");
    return 2;
  }
  return std::nullopt;
}

// --model, else the default model, else a small synthetic one written into the run folder.
std::optional<int> LocalCluster::ChooseModel() {
  if (o_.model.empty()) o_.model = FindDefaultModel();
  if (!o_.model.empty()) return std::nullopt;
  const fs::path synth = run_dir_ / "synthetic-model";
  std::fprintf(stderr,
               "no model found ($SHARDSERVE_MODEL, ../shared/models/stories260K, models/); "
               "serving a small synthetic model instead (its text is noise)\n");
  pid_t p = Spawn({(bin_ / "shardserve").string(), "synth", "--like", "tiny-llama", "--dtype",
                   "f32", "--out", synth.string(), "--seed", "1"},
                  (run_dir_ / "synth.log").string());
  int status = 1;
  if (p > 0) waitpid(p, &status, 0);
  if (p <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "error: shardserve synth failed; see %s\n",
                 (run_dir_ / "synth.log").c_str());
    return 1;
  }
  o_.model = synth.string();
  return std::nullopt;
}

std::optional<int> LocalCluster::Prepare() {
  if (auto rc = CheckBinaries()) return rc;
  // Mode 0700: the cluster secret lives here too.
  if (!o_.log_dir.empty()) {
    std::error_code ec;
    fs::create_directories(o_.log_dir, ec);
    if (ec || !fs::is_directory(o_.log_dir)) {
      std::fprintf(stderr, "error: --log-dir %s: cannot create it: %s\n", o_.log_dir.c_str(),
                   ec.message().c_str());
      return 2;
    }
    fs::permissions(o_.log_dir, fs::perms::owner_all, ec);
    run_dir_ = fs::absolute(o_.log_dir);
  } else {
    const std::string tmp = fs::temp_directory_path().string() + "/shardserve-up-XXXXXX";
    std::vector<char> dir_template(tmp.begin(), tmp.end());
    dir_template.push_back('\0');
    if (mkdtemp(dir_template.data()) == nullptr) {
      std::fprintf(stderr, "error: cannot create a folder in %s\n", tmp.c_str());
      return 1;
    }
    run_dir_ = dir_template.data();
  }
  secret_file_ = run_dir_ / "cluster-secret";
  if (absl::Status s = WriteClusterSecret(secret_file_.string()); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  if (auto rc = ChooseModel()) return rc;
  // More workers than layers would leave a stage empty: say so in up's own terms.
  if (const int layers = ModelLayers(o_.model); layers > 0 && o_.workers > layers) {
    std::fprintf(stderr,
                 "error: --workers %d: the model in %s has %d layers, so at most %d workers (one "
                 "pipeline stage each)\n",
                 o_.workers, o_.model.c_str(), layers, layers);
    std::error_code ec;
    if (o_.log_dir.empty()) fs::remove_all(run_dir_, ec);
    return 2;
  }
  if (o_.threads == 0) {
    o_.threads =
        std::max<int>(1, static_cast<int>(std::thread::hardware_concurrency()) / o_.workers);
  }
  return std::nullopt;
}

// Workers bind ports the system picks and report them in their --port-file.
std::optional<int> LocalCluster::StartWorkers(std::vector<std::string>* addresses) {
  std::vector<fs::path> port_files;
  for (int i = 0; i < o_.workers; ++i) {
    port_files.push_back(run_dir_ / absl::StrCat("worker-", i, ".port"));
    if (!Start(absl::StrCat("worker ", i),
               {worker_bin_, "--listen", "127.0.0.1:0", "--port-file", port_files.back().string(),
                "--metrics-listen", "127.0.0.1:0", "--threads", std::to_string(o_.threads),
                "--model-root", o_.model},
               run_dir_ / absl::StrCat("worker-", i, ".log"))) {
      std::fprintf(stderr, "error: cannot start %s\n", worker_bin_.c_str());
      Stop();
      return 1;
    }
  }
  started_ = absl::Now();
  addresses->assign(o_.workers, "");
  const absl::Time give_up =
      started_ + std::min(absl::Seconds(30), absl::Seconds(o_.ready_timeout_s));
  while (true) {
    int have = 0;
    for (int i = 0; i < o_.workers; ++i) {
      std::string& address = (*addresses)[i];
      if (address.empty()) {
        const int port = ReadPortFile(port_files[i]);
        if (port < 0) {
          return Fail(
              {absl::StrCat("worker ", i, ": unreadable --port-file ", port_files[i].string()), 1});
        }
        if (port > 0) address = absl::StrCat("127.0.0.1:", port);
      }
      if (!address.empty()) ++have;
    }
    if (std::optional<Failure> f = CheckChildren(children_)) return Fail(*f);
    if (have == o_.workers) return std::nullopt;
    if (absl::Now() > give_up) {
      return Fail(
          {absl::StrCat(o_.workers - have, " of ", o_.workers, " workers were not listening after ",
                        absl::ToInt64Seconds(give_up - started_), " s"),
           1});
    }
    Progress("starting");
    if (Interrupted(signals_, absl::Milliseconds(50))) return Interrupt();
  }
}

std::optional<int> LocalCluster::StartRouter(const std::vector<std::string>& addresses) {
  std::vector<std::string> args = {router_bin_,
                                   "--listen",
                                   o_.listen,
                                   "--port-file",
                                   RouterPortFile().string(),
                                   "--workers",
                                   absl::StrJoin(addresses, ","),
                                   "--model",
                                   o_.model};
  if (!o_.layers.empty()) args.insert(args.end(), {"--layers", o_.layers});
  if (!o_.http_listen.empty()) args.insert(args.end(), {"--http-listen", o_.http_listen});
  if (!o_.api_key.empty()) args.insert(args.end(), {"--api-key", o_.api_key});
  args.insert(args.end(), o_.router_args.begin(), o_.router_args.end());
  addresses_ = addresses;
  if (Start("router", args, run_dir_ / "router.log")) return std::nullopt;
  std::fprintf(stderr, "error: cannot start %s\n", router_bin_.c_str());
  Stop();
  return 1;
}

std::optional<int> LocalCluster::WaitServing() {
  const absl::Time give_up = started_ + absl::Seconds(o_.ready_timeout_s);
  while (true) {
    // Logs first: a router that cannot load the model keeps retrying (and is not serving).
    if (std::optional<Failure> f = CheckChildren(children_)) return Fail(*f);
    // Health is asked only once the router has written its --port-file, that is once it holds
    // the port: another process on --listen (or one that took the port between a caller's
    // choice and the router's bind) is never mistaken for this cluster.
    if (address_.empty()) {
      const int port = ReadPortFile(RouterPortFile());
      if (port < 0) return Fail({"router: unreadable --port-file " + RouterPortFile().string(), 1});
      if (port > 0) address_ = ConnectAddress(o_.listen, port);
    }
    if (!address_.empty() && HealthServing(address_, absl::Milliseconds(500))) break;
    if (absl::Now() > give_up) {
      return Fail({absl::StrCat("the cluster was not serving after ",
                                static_cast<int64_t>(o_.ready_timeout_s + 0.5), " s"),
                   1});
    }
    Progress("loading the model");
    if (Interrupted(signals_, absl::Milliseconds(100))) return Interrupt();
  }
  ClearProgress();
  PrintBanner();
  return std::nullopt;
}

void LocalCluster::PrintBanner() const {
  std::string banner = absl::StrCat("shardserve is up: model ", o_.model, ", ", Workers(o_.workers),
                                    "\n  gRPC:  ", address_, "\n");
  if (!o_.http_listen.empty()) {
    const int port = LoggedPort(run_dir_ / "router.log", "HTTP and /metrics on ");
    const std::string http =
        absl::StrCat("http://", port > 0 ? ConnectAddress(o_.http_listen, port) : o_.http_listen);
    absl::StrAppend(&banner, "  HTTP:  ", http, " (OpenAI API, /metrics)\n", "  console: ", http,
                    "/console\n");
  }
  for (size_t i = 0; i < addresses_.size(); ++i) {
    const int metrics = LoggedPort(run_dir_ / absl::StrCat("worker-", i, ".log"), "metrics on ");
    absl::StrAppend(&banner, "  worker ", i, ": ", addresses_[i]);
    if (metrics > 0) absl::StrAppend(&banner, ", metrics http://127.0.0.1:", metrics, "/metrics");
    absl::StrAppend(&banner, "\n");
  }
  absl::StrAppend(&banner, "  logs:  ", run_dir_.string(), "\n");
  if (!o_.keep_logs && o_.log_dir.empty()) {
    absl::StrAppend(&banner, "         (removed at a clean stop; --keep-logs keeps them)\n");
  }
  absl::StrAppend(&banner, "  try:   shardserve complete --server ", address_,
                  " --prompt \"Once upon a time\" --max-tokens 64 --temperature 0\n",
                  "         shardserve status --server ", address_, "\n");
  std::fputs(banner.c_str(), stderr);
}

int LocalCluster::RunPrompt() {
  v1::GenerateRequest request;
  request.set_text(o_.prompt);
  request.set_max_tokens(o_.max_tokens);
  request.mutable_sampling()->set_temperature(o_.temperature);
  std::fwrite(o_.prompt.data(), 1, o_.prompt.size(), stdout);
  auto result = RunCompletion(address_, request, absl::Minutes(10), stdout, o_.api_key);
  std::fputc('\n', stdout);
  if (!result.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(result.status().message()).c_str());
    return Finish(1);
  }
  return Finish(0);
}

int LocalCluster::ServeUntilInterrupted() {
  std::fprintf(stderr, "serving until interrupted (Ctrl-C)\n");
  int exit_code = 0;
  while (true) {
    timespec wait{0, 200 * 1000 * 1000};
    int sig = sigtimedwait(&signals_, nullptr, &wait);
    if (sig == SIGINT || sig == SIGTERM) break;
    auto dead = std::find_if(children_.begin(), children_.end(), [](Child& c) {
      if (!c.exited && waitpid(c.pid, &c.status, WNOHANG) == c.pid) c.exited = true;
      return c.exited;
    });
    if (dead != children_.end()) {
      std::fprintf(stderr, "shardserve up: %s (pid %d) %s: %s; logs in %s\n", dead->name.c_str(),
                   dead->pid, DescribeExit(dead->status).c_str(), LastLine(dead->log).c_str(),
                   run_dir_.c_str());
      exit_code = 1;
      break;
    }
  }
  return Finish(exit_code);
}

}  // namespace

int UpMain(int argc, char** argv) {
  CLI::App app{"Starts a local shardserve cluster: a router and N workers.", "shardserve up"};
  UpOptions options;
  AddUpFlags(app, &options);
  // Everything after `--` is the router's.
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) != "--") continue;
    options.router_args.assign(argv + i + 1, argv + argc);
    argc = i;
    break;
  }
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  options.api_key = ApiKeyOrEnv(options.api_key);
  // Block the signals we wait for; children get an empty mask (see Spawn).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const bool prompt = !options.prompt.empty();
  LocalCluster cluster(std::move(options), signals);
  if (auto rc = cluster.Prepare()) return *rc;
  std::vector<std::string> addresses;
  if (auto rc = cluster.StartWorkers(&addresses)) return *rc;
  if (auto rc = cluster.StartRouter(addresses)) return *rc;
  if (auto rc = cluster.WaitServing()) return *rc;
  return prompt ? cluster.RunPrompt() : cluster.ServeUntilInterrupted();
}

}  // namespace shardserve
