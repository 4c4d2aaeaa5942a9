#include "tests/e2e/cluster_harness.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <poll.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/cluster_auth.h"
#include "common/tls.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace shardserve::e2e {

namespace fs = std::filesystem;

std::string BinPath(const std::string& name) {
  return absl::StrCat(SHARDSERVE_BINARY_DIR, "/bin/", name);
}

std::string Stories260K() {
  return fs::weakly_canonical(fs::path(SHARDSERVE_SOURCE_DIR) / "../shared/models/stories260K")
      .string();
}

namespace {

std::string WriteOnce(const std::string& like, bool config_only) {
  const std::string dir =
      absl::StrCat(SHARDSERVE_BINARY_DIR, "/test-models/", like, config_only ? "-shape" : "");
  if (!fs::exists(dir + "/config.json")) {
    const std::string tmp = dir + ".tmp" + std::to_string(getpid());
    const std::string cmd =
        absl::StrCat(BinPath("shardserve"), " synth --like ", like, " --dtype f32 --seed 7 ",
                     config_only ? "--config-only " : "", "--out ", tmp, " 2>/dev/null");
    if (std::system(cmd.c_str()) == 0) {
      // Tests running in parallel may race to write the same model: the first rename wins and
      // the others drop their copy.
      std::error_code ec;
      fs::rename(tmp, dir, ec);
      if (ec) fs::remove_all(tmp, ec);
    }
  }
  return dir;
}

}  // namespace

std::string SyntheticModel(const std::string& like) { return WriteOnce(like, false); }
std::string ShapeOnlyModel(const std::string& like) { return WriteOnce(like, true); }

std::string Synthetic8Layer() { return SyntheticModel("tiny-llama-8l"); }

int WaitPortFile(const std::string& port_file, Process& process, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up && process.alive()) {
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0) return port;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return 0;
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

const std::string& ClusterSecretFile() {
  static const std::string* path = [] {
    auto* p = new std::string(absl::StrCat(SHARDSERVE_BINARY_DIR, "/test-cluster-secret"));
    if (!fs::exists(*p)) {
      // Parallel tests may race: each writes its own file and the first rename wins; all then
      // read the same secret.
      const std::string tmp = absl::StrCat(*p, ".", getpid());
      if (WriteClusterSecret(tmp).ok()) {
        std::error_code ec;
        if (!fs::exists(*p)) fs::rename(tmp, *p, ec);
        fs::remove(tmp, ec);
      }
    }
    auto secret = ReadClusterSecret(*p);
    if (secret.ok()) SetProcessClusterSecret(*secret);
    setenv(kClusterSecretEnv, p->c_str(), 1);
    return p;
  }();
  return *path;
}

Process::Process(std::vector<std::string> args, std::string log_path) {
  ClusterSecretFile();
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&actions);
}

Process::~Process() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

bool Process::alive() {
  if (pid_ <= 0 || reaped_) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) {
    reaped_ = true;
    return false;
  }
  return true;
}

int Process::Wait(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (alive() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(20));
  if (!reaped_) return -1;
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
}

void Process::Kill(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  logs_ = absl::StrCat(SHARDSERVE_BINARY_DIR, "/test-logs");
  fs::create_directories(logs_);
  const int n = options_.stages * options_.replicas;
  if (!options_.worker_addresses.empty()) {
    worker_addresses_ = options_.worker_addresses;
  } else {
    for (int i = 0; i < n; ++i) {
      worker_addresses_.emplace_back();
      worker_args_.emplace_back();
      worker_logs_.emplace_back();
      workers_.emplace_back();
      StartWorkerOnNewPort(i);
    }
  }
  StartRouter();
}

void Cluster::StartWorkerOnNewPort(int i) {
  const std::string addr = absl::StrCat("127.0.0.1:", FreePort());
  std::vector<std::string> args = {BinPath("shardserve-worker"), "--listen", addr, "--threads",
                                   "1"};
  args.insert(args.end(), options_.worker_args.begin(), options_.worker_args.end());
  if (i == 0) args.insert(args.end(), options_.worker0_args.begin(), options_.worker0_args.end());
  worker_logs_[i] = absl::StrCat(logs_, "/worker-", addr.substr(addr.find(':') + 1), ".log");
  worker_args_[i] = args;
  worker_addresses_[i] = addr;
  workers_[i] = std::make_unique<Process>(args, worker_logs_[i]);
}

void Cluster::StartRouter() {
  router_.reset();
  router_address_ = absl::StrCat("127.0.0.1:", FreePort());
  std::vector<std::string> args = {BinPath("shardserve-router"),
                                   "--listen",
                                   router_address_,
                                   "--workers",
                                   absl::StrJoin(worker_addresses_, ","),
                                   "--model",
                                   options_.model,
                                   "--stages",
                                   std::to_string(options_.stages),
                                   "--replicas",
                                   std::to_string(options_.replicas)};
  args.insert(args.end(), options_.router_args.begin(), options_.router_args.end());
  router_log_ = absl::StrCat(logs_, "/router-",
                             router_address_.substr(router_address_.find(':') + 1), ".log");
  router_ = std::make_unique<Process>(args, router_log_);
}

void Cluster::KillWorker(int i) {
  workers_[i].reset();  // SIGKILL and reap
}

void Cluster::StartWorker(int i) {
  workers_[i] =
      std::make_unique<Process>(worker_args_[i], absl::StrCat(worker_logs_[i], ".", ++restarts_));
}

int Cluster::OursAndReady() {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  const auto& args = options_.router_args;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--api-key") context.AddMetadata("authorization", "Bearer " + args[i + 1]);
  }
  v1::GetModelInfoResponse info;
  if (!Stub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) return 0;
  bool ready = true;
  for (const v1::PipelineLayout& p : info.pipelines()) {
    ready = ready && p.ready();
    for (const v1::StageLayout& st : p.stages()) {
      if (std::find(worker_addresses_.begin(), worker_addresses_.end(), st.worker_address()) ==
          worker_addresses_.end()) {
        return -1;
      }
    }
  }
  return ready ? 1 : 0;
}

absl::Status Cluster::WaitServing(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  // Ports come from FreePort, which another test process running at the same time may also be
  // given: a process that lost the race exits (or, for the router, another router answers on
  // its port). Such a start is retried on new ports a few times.
  // Once it has served, processes are the test's business (it may have killed some).
  int retries = served_ ? 3 : 0;
  while (absl::Now() < give_up) {
    bool restart_router = false;
    for (size_t i = 0; i < workers_.size(); ++i) {
      if (workers_[i] != nullptr && !workers_[i]->alive() && retries < 3) {
        StartWorkerOnNewPort(static_cast<int>(i));
        restart_router = true;
      }
    }
    if (!router_->alive()) {
      if (retries >= 3) return absl::InternalError("router exited");
      restart_router = true;
    }
    if (!restart_router && HealthServing(router_address_, absl::Milliseconds(500))) {
      const int state = OursAndReady();
      if (state > 0) {
        served_ = true;
        return absl::OkStatus();
      }
      restart_router = state < 0 && retries < 3;
    }
    if (restart_router) {
      ++retries;
      StartRouter();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError("router did not become SERVING");
}

std::unique_ptr<v1::InferenceService::Stub> Cluster::Stub() const {
  return v1::InferenceService::NewStub(
      grpc::CreateChannel(router_address_, ProcessChannelCredentials()));
}

absl::StatusOr<Reference> RunGenerate(const std::string& model, const std::string& prompt,
                                      int max_tokens, float temperature, uint64_t seed) {
  std::string quoted = prompt;
  for (size_t p = 0; (p = quoted.find('\'', p)) != std::string::npos; p += 4) {
    quoted.replace(p, 1, "'\\''");
  }
  const std::string cmd = absl::StrCat(
      BinPath("shardserve"), " generate --model ", model, " --prompt '", quoted, "' --max-tokens ",
      max_tokens, " --temperature ", temperature, " --seed ", seed, " --threads 1 --json");
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("popen failed");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  if (pclose(pipe) != 0) return absl::InternalError(absl::StrCat("generate failed: ", cmd));
  auto json = nlohmann::json::parse(out, nullptr, false);
  if (json.is_discarded()) return absl::InternalError("generate printed no JSON: " + out);
  Reference ref;
  ref.ids = json["ids"].get<std::vector<int32_t>>();
  ref.text = json["text"].get<std::string>();
  return ref;
}

v1::GenerateRequest TextRequest(const std::string& prompt, int max_tokens, float temperature,
                                uint64_t seed) {
  v1::GenerateRequest r;
  r.set_text(prompt);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(temperature);
  r.mutable_sampling()->set_seed(seed);
  return r;
}

absl::StatusOr<v1::StatsResponse> WorkerStats(const std::string& address) {
  ClusterSecretFile();
  auto stub = v1::WorkerService::NewStub(grpc::CreateChannel(address, ProcessChannelCredentials()));
  grpc::ClientContext context;
  AttachClusterCredential(&context);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::StatsResponse resp;
  grpc::Status s = stub->Stats(&context, v1::StatsRequest(), &resp);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return resp;
}

absl::StatusOr<v1::DescribeResponse> WorkerDescribe(const std::string& address) {
  ClusterSecretFile();
  auto stub = v1::WorkerService::NewStub(grpc::CreateChannel(address, ProcessChannelCredentials()));
  grpc::ClientContext context;
  AttachClusterCredential(&context);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::DescribeResponse resp;
  grpc::Status s = stub->Describe(&context, v1::DescribeRequest(), &resp);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return resp;
}

CommandResult RunCommand(const std::vector<std::string>& args, const std::string& input,
                         absl::Duration timeout) {
  ClusterSecretFile();
  CommandResult result;
  int in[2], out[2], err[2];
  if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0) return result;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) {
    posix_spawn_file_actions_addclose(&actions, fd);
  }
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  for (int fd : {in[0], out[1], err[1]}) close(fd);
  if (spawned != 0) {
    for (int fd : {in[1], out[0], err[0]}) close(fd);
    result.err = "cannot start " + args[0];
    return result;
  }
  // Small inputs only: they fit the pipe buffer, so writing first cannot deadlock.
  if (!input.empty()) (void)!write(in[1], input.data(), input.size());
  close(in[1]);
  const absl::Time give_up = absl::Now() + timeout;
  std::array<pollfd, 2> fds = {pollfd{out[0], POLLIN, 0}, pollfd{err[0], POLLIN, 0}};
  std::array<std::string*, 2> sinks = {&result.out, &result.err};
  int open_fds = 2;
  while (open_fds > 0 && absl::Now() < give_up) {
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      std::array<char, 4096> buf;
      const ssize_t n = read(fds[i].fd, buf.data(), buf.size());
      if (n > 0) {
        sinks[i]->append(buf.data(), n);
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (const pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  if (open_fds > 0) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

}  // namespace shardserve::e2e
