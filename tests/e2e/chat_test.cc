// `shardserve chat` as a user drives it. Through a pseudo-terminal: /help lists the commands,
// an empty line does not end the session, Ctrl-C stops a reply and the session goes on, the up
// arrow recalls the last line (libedit), /exit ends with status 0. From a pipe: a conversation
// that outgrows the context drops its oldest turns, says so, and goes on.
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

// A process on the slave side of a pseudo-terminal; the test is its keyboard and screen.
class PtyProcess {
 public:
  explicit PtyProcess(const std::vector<std::string>& argv) {
    winsize size{.ws_row = 40, .ws_col = 200, .ws_xpixel = 0, .ws_ypixel = 0};
    pid_ = forkpty(&master_, nullptr, nullptr, &size);
    if (pid_ == 0) {
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~PtyProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) close(master_);
  }
  bool started() const { return pid_ > 0; }

  void Type(const std::string& keys) {
    ASSERT_EQ(write(master_, keys.data(), keys.size()), static_cast<ssize_t>(keys.size()));
  }
  // Reads the screen until `done(screen)` holds or `timeout` passes; returns whether it held.
  template <typename Done>
  bool WaitFor(Done done, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done(screen_)) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      pollfd p{master_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) continue;
      char buf[4096];
      const ssize_t n = read(master_, buf, sizeof(buf));
      if (n <= 0) return done(screen_);  // the process is gone
      screen_.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  // Waits until the terminal is in the line editor's raw mode (`editing`: libedit reads keys one
  // by one, so arrows and Ctrl-C reach it) or back in cooked mode (a reply is being written:
  // Ctrl-C raises SIGINT), reading the screen meanwhile. Keys typed before that would be seen by
  // the terminal driver instead (an up arrow echoed as "^[[A").
  bool WaitForTerminal(bool editing, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      termios mode{};
      if (tcgetattr(master_, &mode) == 0 && ((mode.c_lflag & ICANON) == 0) == editing) return true;
      WaitFor([](const std::string&) { return false; }, absl::Milliseconds(5));
    }
    return false;
  }
  bool WaitForText(const std::string& text, absl::Duration timeout, size_t count = 1) {
    return WaitFor(
        [&](const std::string& s) {
          size_t seen = 0;
          for (size_t at = s.find(text); at != std::string::npos; at = s.find(text, at + 1)) ++seen;
          return seen >= count;
        },
        timeout);
  }
  // The exit status, or -1 when it did not exit within `timeout`.
  int Wait(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      WaitFor([](const std::string&) { return false; }, absl::Milliseconds(50));
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    return -1;
  }
  const std::string& screen() const { return screen_; }

 private:
  int master_ = -1;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string screen_;
};

size_t Count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(Chat, ATerminalUserGetsCommandsCtrlCAndHistory) {
  // Every activation send waits 30 ms, so that a reply takes long enough to be interrupted.
  Cluster cluster(
      {.model = Stories260K(), .stages = 2, .worker_args = {"--fault-send-delay-ms", "30"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  PtyProcess chat(
      {BinPath("shardserve"), "chat", "--server", cluster.router_address(), "--temperature", "0"});
  ASSERT_TRUE(chat.started());
  const absl::Duration t = absl::Seconds(20);
  ASSERT_TRUE(chat.WaitForText("> ", t)) << chat.screen();

  chat.Type("/help\r");
  ASSERT_TRUE(chat.WaitForText("/system TEXT", t)) << chat.screen();
  ASSERT_TRUE(chat.WaitForText("> ", t, 2)) << chat.screen();
  chat.Type("\r");  // an empty line is not the end
  ASSERT_TRUE(chat.WaitForText("> ", t, 3)) << chat.screen();

  const std::string ask = "Tell me a story.";
  const size_t asked_at = chat.screen().size();
  chat.Type(ask + "\r");
  // Ctrl-C once the request is running on the router (the line has left the editor) and some of
  // the reply is on the screen: the reply stops and the prompt comes back.
  auto running = [&] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    v1::GetClusterStatusResponse status;
    return cluster.Stub()
               ->GetClusterStatus(&context, v1::GetClusterStatusRequest(), &status)
               .ok() &&
           status.load().running() >= 1;
  };
  bool in_flight = false;
  for (const absl::Time until = absl::Now() + t; !in_flight && absl::Now() < until;
       absl::SleepFor(absl::Milliseconds(50))) {
    in_flight = running();
  }
  ASSERT_TRUE(in_flight) << chat.screen();
  ASSERT_TRUE(
      chat.WaitFor([&](const std::string& s) { return s.size() > asked_at + ask.size() + 12; }, t))
      << chat.screen();
  ASSERT_TRUE(chat.WaitForTerminal(/*editing=*/false, t));
  chat.Type("\x03");
  ASSERT_TRUE(chat.WaitForText("[stopped]", t)) << chat.screen();
  ASSERT_TRUE(chat.WaitForText("> ", t, 4)) << chat.screen();

  // The up arrow brings the last line back (libedit), not "^[[A"; Enter sends it again.
  const size_t before_recall = chat.screen().size();
  ASSERT_TRUE(chat.WaitForTerminal(/*editing=*/true, t));
  chat.Type("\x1b[A");
  ASSERT_TRUE(chat.WaitFor(
      [&](const std::string& s) { return s.find(ask, before_recall) != std::string::npos; }, t))
      << chat.screen();
  EXPECT_EQ(chat.screen().find("^[[A"), std::string::npos) << chat.screen();
  chat.Type("\r");
  const size_t resent_at = chat.screen().size();
  ASSERT_TRUE(chat.WaitFor([&](const std::string& s) { return s.size() > resent_at + 12; }, t))
      << chat.screen();
  ASSERT_TRUE(chat.WaitForTerminal(/*editing=*/false, t));
  chat.Type("\x03");
  ASSERT_TRUE(chat.WaitForText("[stopped]", t, 2)) << chat.screen();

  chat.Type("/exit\r");
  EXPECT_EQ(chat.Wait(t), 0) << chat.screen();
  EXPECT_EQ(Count(chat.screen(), "error"), 0u) << chat.screen();
}

TEST(Chat, AConversationThatOutgrowsTheContextDropsItsOldestTurns) {
  Cluster cluster({.model = Stories260K(), .stages = 1});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  // Each turn is about 150 tokens of stories260K's 512: the fourth cannot fit with the first.
  std::string turn;
  for (int i = 0; i < 24; ++i) turn += "The cat sat. ";
  std::string input;
  for (int i = 0; i < 5; ++i) input += turn + "\n";
  CommandResult r = RunCommand({BinPath("shardserve"), "chat", "--server", cluster.router_address(),
                                "--max-tokens", "4", "--temperature", "0"},
                               input, absl::Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(Count(r.err, "dropped the oldest turn"), 1u) << r.err;
  EXPECT_EQ(Count(r.err, "error"), 0u) << r.err;
  // Five replies, each on its own line after a prompt, and a last prompt at the end of input.
  std::vector<std::string> turns = absl::StrSplit(r.out, "> ");
  ASSERT_EQ(turns.size(), 7u) << r.out;
  for (int i = 1; i <= 5; ++i) EXPECT_GT(turns[i].size(), 1u) << "turn " << i << ": " << r.out;
}

}  // namespace
}  // namespace shardserve::e2e
