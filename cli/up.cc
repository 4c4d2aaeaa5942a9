#include "cli/up.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/complete.h"
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

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
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

void StopAll(std::vector<pid_t>& pids) {
  for (pid_t p : pids) kill(p, SIGTERM);
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  for (pid_t p : pids) {
    while (waitpid(p, nullptr, WNOHANG) == 0) {
      if (absl::Now() > give_up) {
        kill(p, SIGKILL);
        waitpid(p, nullptr, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  pids.clear();
}

// The last non-empty line of a log file, without the logger's prefix, for one-line errors.
std::string LastLine(const fs::path& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  // "E 12:00:00.000 file.cc:12] message" -> "message"
  if (const size_t bracket = last.find("] "); bracket != std::string::npos && bracket < 48) {
    last = last.substr(bracket + 2);
  }
  return last;
}

// The first child that has exited, or -1.
pid_t ExitedChild(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) {
    if (waitpid(p, nullptr, WNOHANG) == p) return p;
  }
  return -1;
}

}  // namespace

int UpMain(int argc, char** argv) {
  CLI::App app{"Starts a local shardserve cluster: a router and N workers.", "shardserve up"};
  int workers = 2, threads = 0, max_tokens = 128;
  float temperature = 0.8f;
  std::string model, listen = "127.0.0.1:50051", http_listen, prompt, layers;
  double ready_timeout_s = 300;
  app.add_option("--workers", workers, "pipeline stages (one worker each)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--model", model,
                 "Hugging Face model folder (default: $SHARDSERVE_MODEL, "
                 "../shared/models/stories260K, models/, else a small synthetic model)");
  app.add_option("--listen", listen, "router gRPC address host:port")->capture_default_str();
  app.add_option("--http-listen", http_listen,
                 "router OpenAI-compatible HTTP address host:port (default: no HTTP)");
  app.add_option("--threads", threads, "compute threads per worker (0: CPUs / workers)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--layers", layers, "manual layer split, e.g. 0-2,3-4 (default: balanced)");
  app.add_option("--prompt", prompt, "stream one completion once ready, then stop");
  app.add_option("--max-tokens", max_tokens, "tokens to generate for --prompt")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--temperature", temperature, "sampling temperature for --prompt (0: greedy)")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--ready-timeout-s", ready_timeout_s, "how long to wait for SERVING")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // Block the signals we wait for; children get an empty mask (see Spawn).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const fs::path bin = SelfDir();
  const std::string router_bin = (bin / "shardserve-router").string();
  const std::string worker_bin = (bin / "shardserve-worker").string();
  for (const std::string& b : {router_bin, worker_bin}) {
    if (access(b.c_str(), X_OK) != 0) {
      std::fprintf(stderr, "error: %s not found next to this executable; build it first\n",
                   b.c_str());
      return 1;
    }
  }
  if (!model.empty() && !IsModelFolder(model)) {
    std::error_code ec;
    std::fprintf(stderr, "error: --model %s: %s\n", model.c_str(),
                 fs::exists(model, ec) ? "not a model folder (no config.json in it)"
                                       : "no such file or folder");
    return 2;
  }
  char dir_template[] = "/tmp/shardserve-up-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::fprintf(stderr, "error: cannot create a temporary folder\n");
    return 1;
  }
  const fs::path run_dir = dir_template;

  if (model.empty()) model = FindDefaultModel();
  if (model.empty()) {
    const fs::path synth = run_dir / "synthetic-model";
    std::fprintf(stderr,
                 "no model found ($SHARDSERVE_MODEL, ../shared/models/stories260K, models/); "
                 "serving a small synthetic model instead (its text is noise)\n");
    pid_t p = Spawn({(bin / "shardserve").string(), "synth", "--like", "tiny-llama", "--dtype",
                     "f32", "--out", synth.string(), "--seed", "1"},
                    (run_dir / "synth.log").string());
    int status = 1;
    if (p > 0) waitpid(p, &status, 0);
    if (p <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "error: shardserve synth failed; see %s\n",
                   (run_dir / "synth.log").c_str());
      return 1;
    }
    model = synth.string();
  }
  if (threads == 0) {
    threads = std::max<int>(1, static_cast<int>(std::thread::hardware_concurrency()) / workers);
  }

  std::vector<pid_t> children;
  std::vector<std::string> addresses;
  for (int i = 0; i < workers; ++i) {
    const std::string addr = absl::StrCat("127.0.0.1:", FreePort());
    pid_t p = Spawn({worker_bin, "--listen", addr, "--threads", std::to_string(threads)},
                    (run_dir / absl::StrCat("worker-", i, ".log")).string());
    if (p <= 0) {
      std::fprintf(stderr, "error: cannot start %s\n", worker_bin.c_str());
      StopAll(children);
      return 1;
    }
    children.push_back(p);
    addresses.push_back(addr);
  }
  std::vector<std::string> router_args = {
      router_bin, "--listen", listen, "--workers", absl::StrJoin(addresses, ","), "--model", model};
  if (!layers.empty()) {
    router_args.push_back("--layers");
    router_args.push_back(layers);
  }
  if (!http_listen.empty()) {
    router_args.push_back("--http-listen");
    router_args.push_back(http_listen);
  }
  pid_t router = Spawn(router_args, (run_dir / "router.log").string());
  if (router <= 0) {
    std::fprintf(stderr, "error: cannot start %s\n", router_bin.c_str());
    StopAll(children);
    return 1;
  }
  children.push_back(router);

  const absl::Time started = absl::Now();
  const absl::Time give_up = started + absl::Seconds(ready_timeout_s);
  // Progress on a terminal only; piped output stays clean.
  const bool tty = isatty(STDERR_FILENO);
  while (!HealthServing(listen, absl::Milliseconds(500))) {
    if (tty) {
      std::fprintf(stderr, "\rloading the model on %d worker%s... %.0f s", workers,
                   workers == 1 ? "" : "s", absl::ToDoubleSeconds(absl::Now() - started));
    }
    if (pid_t dead = ExitedChild(children); dead != -1) {
      children.erase(std::find(children.begin(), children.end(), dead));
      StopAll(children);
      const std::string why = dead == router ? LastLine(run_dir / "router.log") : "";
      std::fprintf(stderr, "error: the %s exited before serving%s%s (logs in %s)\n",
                   dead == router ? "router" : "worker", why.empty() ? "" : ": ", why.c_str(),
                   run_dir.c_str());
      return 1;
    }
    if (absl::Now() > give_up) {
      std::fprintf(stderr, "error: the cluster was not serving after %.0f s (logs in %s)\n",
                   ready_timeout_s, run_dir.c_str());
      StopAll(children);
      return 1;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr,
               "shardserve is up: model %s, %d workers\n  gRPC:  %s\n  logs:  %s\n"
               "  try:   shardserve complete --server %s --prompt \"Once upon a time\" "
               "--max-tokens 64 --temperature 0\n",
               model.c_str(), workers, listen.c_str(), run_dir.c_str(), listen.c_str());

  if (!prompt.empty()) {
    v1::GenerateRequest request;
    request.set_text(prompt);
    request.set_max_tokens(max_tokens);
    request.mutable_sampling()->set_temperature(temperature);
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    auto result = RunCompletion(listen, request, absl::Minutes(10), stdout);
    std::fputc('\n', stdout);
    StopAll(children);
    if (!result.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    return 0;
  }

  std::fprintf(stderr, "serving until interrupted (Ctrl-C)\n");
  int exit_code = 0;
  while (true) {
    timespec wait{0, 200 * 1000 * 1000};
    int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig == SIGINT || sig == SIGTERM) break;
    if (pid_t dead = ExitedChild(children); dead != -1) {
      std::fprintf(stderr, "error: %s (pid %d) exited; logs in %s\n",
                   dead == router ? "the router" : "a worker", dead, run_dir.c_str());
      children.erase(std::find(children.begin(), children.end(), dead));
      exit_code = 1;
      break;
    }
  }
  StopAll(children);
  return exit_code;
}

}  // namespace shardserve
