// Several hosts on one machine: the router and two workers each run in their own network
// namespace, joined by veth pairs to a bridge, with their own 10.203.0.x addresses (which exist
// only inside these namespaces). Traffic between router, stage 0 and stage 1 crosses real
// interfaces. The test then takes one worker's link down and checks that the failure is
// detected and reported. Needs root (CI runs as root); it fails, not skips, without it.
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

constexpr char kIp[] = "/usr/sbin/ip";
constexpr char kRouterAddress[] = "10.203.0.2:50051";
constexpr char kWorker0Address[] = "10.203.0.11:50061";
constexpr char kWorker1Address[] = "10.203.0.12:50061";

// Runs `ip ARGS...`; returns its stderr on failure.
absl::Status Ip(std::vector<std::string> args) {
  args.insert(args.begin(), kIp);
  CommandResult r = RunCommand(args, "", absl::Seconds(10));
  if (r.exit_code == 0) return absl::OkStatus();
  std::string line;
  for (const std::string& a : args) absl::StrAppend(&line, a, " ");
  return absl::InternalError(absl::StrCat(line, "failed: ", r.err));
}

// A switch namespace holding a bridge, and one namespace per host with an eth0 on it. Everything
// is removed when this goes away, whatever the test's outcome; namespaces (and processes) left
// by a run that was killed are removed by the next run.
class VirtualNetwork {
 public:
  VirtualNetwork() : prefix_(absl::StrCat("ssnet", getpid(), "-")) {}
  ~VirtualNetwork() {
    for (const std::string& ns : namespaces_) (void)Ip({"netns", "del", ns});
  }

  static void RemoveStale() {
    CommandResult r = RunCommand({kIp, "netns", "list"}, "", absl::Seconds(10));
    for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
      std::string name(line.substr(0, line.find(' ')));
      if (!absl::StartsWith(name, "ssnet")) continue;
      const int pid = std::atoi(name.c_str() + 5);
      if (pid <= 0 || kill(pid, 0) == 0) continue;
      // The killed run's routers and workers outlived it inside the namespace.
      CommandResult pids = RunCommand({kIp, "netns", "pids", name}, "", absl::Seconds(10));
      for (absl::string_view p : absl::StrSplit(pids.out, '\n', absl::SkipEmpty())) {
        kill(std::atoi(std::string(p).c_str()), SIGKILL);
      }
      (void)Ip({"netns", "del", name});
    }
  }

  absl::Status CreateSwitch() {
    const std::string ns = Name("switch");
    RETURN_IF_ERROR(AddNamespace(ns));
    RETURN_IF_ERROR(Ip({"-n", ns, "link", "add", "br0", "type", "bridge"}));
    return Ip({"-n", ns, "link", "set", "br0", "up"});
  }

  // Host `host` (a short name) gets eth0 with `address`/24, cabled to the bridge through a veth
  // whose switch-side end is returned by SwitchPort(host).
  absl::Status AddHost(const std::string& host, const std::string& address) {
    const std::string ns = Name(host);
    RETURN_IF_ERROR(AddNamespace(ns));
    const std::string tmp = absl::StrCat("ssv", getpid() % 100000, host.substr(0, 3));
    RETURN_IF_ERROR(Ip({"link", "add", tmp, "type", "veth", "peer", "name", SwitchPort(host)}));
    RETURN_IF_ERROR(Ip({"link", "set", tmp, "netns", ns}));
    RETURN_IF_ERROR(Ip({"link", "set", SwitchPort(host), "netns", Name("switch")}));
    RETURN_IF_ERROR(Ip({"-n", ns, "link", "set", tmp, "name", "eth0"}));
    RETURN_IF_ERROR(Ip({"-n", ns, "addr", "add", address + "/24", "dev", "eth0"}));
    RETURN_IF_ERROR(Ip({"-n", ns, "link", "set", "eth0", "up"}));
    RETURN_IF_ERROR(Ip({"-n", ns, "link", "set", "lo", "up"}));
    RETURN_IF_ERROR(Ip({"-n", Name("switch"), "link", "set", SwitchPort(host), "master", "br0"}));
    return Ip({"-n", Name("switch"), "link", "set", SwitchPort(host), "up"});
  }

  // Pulls the host's cable: its eth0 goes down, packets to and from it are dropped.
  absl::Status CutLink(const std::string& host) {
    return Ip({"-n", Name(host), "link", "set", "eth0", "down"});
  }

  std::string Name(const std::string& host) const { return prefix_ + host; }
  std::string SwitchPort(const std::string& host) const {
    return absl::StrCat("ssb", getpid() % 100000, host.substr(0, 3));
  }

  // Moves the calling thread, and every thread it starts from now on, into the host's
  // namespace. Done before the first gRPC call, so gRPC's own threads start there too.
  absl::Status Enter(const std::string& host) {
    const std::string path = "/var/run/netns/" + Name(host);
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return absl::InternalError("cannot open " + path);
    const int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    if (rc != 0) return absl::InternalError("setns " + path + " failed");
    return absl::OkStatus();
  }

 private:
  absl::Status AddNamespace(const std::string& ns) {
    RETURN_IF_ERROR(Ip({"netns", "add", ns}));
    namespaces_.push_back(ns);
    return absl::OkStatus();
  }

  std::string prefix_;
  std::vector<std::string> namespaces_;
};

// grpc.health.v1 Check for the whole server: SERVING (1), NOT_SERVING (2), or an error.
absl::StatusOr<int> HealthStatus(const std::string& address, absl::Duration timeout) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1), response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("unreadable health response");
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1}: tag 0x08 then the enum; empty means UNKNOWN (0).
  if (bytes.size() == 2 && bytes[0] == 0x08) return static_cast<int>(bytes[1]);
  return 0;
}

std::vector<std::string> InNamespace(const std::string& ns, std::vector<std::string> args) {
  args.insert(args.begin(), {kIp, "netns", "exec", ns});
  return args;
}

TEST(NetworkNamespaces, TwoStagesAcrossHostsThenALinkCut) {
  ASSERT_EQ(geteuid(), 0u)
      << "this test creates network namespaces and veth pairs and must run as root "
         "(CI does); run it with sudo, or exclude it with ctest -E NetworkNamespaces";
  VirtualNetwork::RemoveStale();
  const std::string model = Stories260K();
  const std::string prompt = "Once upon a time";
  auto reference = RunGenerate(model, prompt, 32, 0.0f, 0);
  ASSERT_TRUE(reference.ok()) << reference.status();

  VirtualNetwork net;
  ASSERT_TRUE(net.CreateSwitch().ok());
  for (auto [host, address] : {std::pair<std::string, std::string>{"client", "10.203.0.1"},
                               {"router", "10.203.0.2"},
                               {"w0", "10.203.0.11"},
                               {"w1", "10.203.0.12"}}) {
    absl::Status s = net.AddHost(host, address);
    ASSERT_TRUE(s.ok()) << s;
  }

  const std::string logs =
      (std::filesystem::path(BinPath("shardserve")).parent_path().parent_path() / "test-logs")
          .string();
  std::filesystem::create_directories(logs);
  Process worker0(InNamespace(net.Name("w0"), {BinPath("shardserve-worker"), "--listen",
                                               kWorker0Address, "--threads", "1"}),
                  logs + "/netns-worker0.log");
  Process worker1(InNamespace(net.Name("w1"), {BinPath("shardserve-worker"), "--listen",
                                               kWorker1Address, "--threads", "1"}),
                  logs + "/netns-worker1.log");
  Process router(InNamespace(net.Name("router"),
                             {BinPath("shardserve-router"), "--listen", kRouterAddress, "--workers",
                              absl::StrCat(kWorker0Address, ",", kWorker1Address), "--model", model,
                              "--stages", "2", "--replicas", "1"}),
                 logs + "/netns-router.log");

  // From here on this process is a client on its own host.
  ASSERT_TRUE(net.Enter("client").ok());
  bool serving = false;
  for (absl::Time give_up = absl::Now() + absl::Seconds(30); !serving && absl::Now() < give_up;) {
    ASSERT_TRUE(router.alive()) << "router exited; see " << logs << "/netns-router.log";
    auto health = HealthStatus(kRouterAddress, absl::Milliseconds(500));
    serving = health.ok() && *health == 1;
    if (!serving) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(serving) << "router never SERVING; logs in " << logs;

  auto got =
      RunCompletion(kRouterAddress, TextRequest(prompt, 32, 0.0f, 0), absl::Seconds(30), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->ids, reference->ids);
  EXPECT_EQ(got->text, reference->text);

  // Stage 1 loses its network. The next request must fail, saying which worker is gone.
  ASSERT_TRUE(net.CutLink("w1").ok());
  const absl::Time cut = absl::Now();
  auto failed =
      RunCompletion(kRouterAddress, TextRequest(prompt, 32, 0.0f, 0), absl::Seconds(40), nullptr);
  ASSERT_FALSE(failed.ok()) << "a request succeeded with stage 1 unreachable";
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_TRUE(absl::StrContains(failed.status().message(), kWorker1Address)) << failed.status();
  std::printf("link cut reported after %.1f s: %s\n", absl::ToDoubleSeconds(absl::Now() - cut),
              std::string(failed.status().message()).c_str());

  // The router stays up and says it cannot serve.
  int health = -1;
  for (absl::Time give_up = absl::Now() + absl::Seconds(10); absl::Now() < give_up;) {
    auto h = HealthStatus(kRouterAddress, absl::Seconds(1));
    health = h.ok() ? *h : -1;
    if (health == 2) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(router.alive());
  EXPECT_EQ(health, 2) << "router health is not NOT_SERVING (2) with stage 1 unreachable";
}

}  // namespace
}  // namespace shardserve::e2e
