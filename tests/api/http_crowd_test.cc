// The HTTP front under a crowd: 1,000 clients connect at once and each sends one completion.
// Every one gets an answer, a result or a 429/503 saying the server is full, within a bound;
// none hangs or is dropped. Before the accept queue and the connection pool were sized for
// it, 300 clients at once left requests unanswered for 30 s and the kernel dropped SYNs.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

constexpr int kClients = 1000;

struct Client {
  int fd = -1;
  std::string request;
  size_t sent = 0;
  std::string response;
  bool done = false;
};

// The status code of an HTTP response ("HTTP/1.1 429 ..."), or 0 for none.
int StatusOf(const std::string& response) {
  if (response.compare(0, 9, "HTTP/1.1 ") != 0 || response.size() < 12) return 0;
  return std::atoi(response.substr(9, 3).c_str());
}

TEST(HttpCrowd, AThousandConnectionsAtOnceAllGetAnAnswer) {
  const int http_port = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http_port)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  ASSERT_EQ(api_testing::HttpGet(http_port, "/health").status, 200);

  const std::string body = R"({"prompt":"Once upon a time","max_tokens":4,"temperature":0})";
  const std::string request = absl::StrCat(
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      "Connection: close\r\nContent-Length: ",
      body.size(), "\r\n\r\n", body);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(http_port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  // All connect at once (non-blocking), then send and read as the sockets allow.
  std::vector<Client> clients(kClients);
  for (Client& c : clients) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(c.fd, 0) << "socket: " << errno;
    const int rc = connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << "connect: " << errno;
    c.request = request;
  }
  const absl::Time start = absl::Now();
  const absl::Duration bound = absl::Seconds(60);
  int open = kClients;
  std::vector<pollfd> fds;
  std::vector<Client*> owners;
  while (open > 0 && absl::Now() - start < bound) {
    fds.clear();
    owners.clear();
    for (Client& c : clients) {
      if (c.done) continue;
      fds.push_back({c.fd, static_cast<short>(c.sent < c.request.size() ? POLLOUT : POLLIN), 0});
      owners.push_back(&c);
    }
    ASSERT_GE(poll(fds.data(), fds.size(), 1000), 0);
    for (size_t i = 0; i < fds.size(); ++i) {
      Client& c = *owners[i];
      if (fds[i].revents == 0) continue;
      if (c.sent < c.request.size()) {
        const ssize_t n =
            send(c.fd, c.request.data() + c.sent, c.request.size() - c.sent, MSG_NOSIGNAL);
        if (n > 0) {
          c.sent += static_cast<size_t>(n);
        } else if (errno != EAGAIN) {
          c.done = true;  // refused or reset: counted as no answer below
          --open;
        }
        continue;
      }
      char buf[4096];
      const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
      if (n > 0) {
        c.response.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EAGAIN) {
        c.done = true;
        --open;
      }
    }
  }
  const absl::Duration took = absl::Now() - start;
  std::map<int, int> by_status;
  for (Client& c : clients) {
    ++by_status[c.done ? StatusOf(c.response) : -1];
    close(c.fd);
  }
  std::string counts;
  for (const auto& [status, n] : by_status) absl::StrAppend(&counts, status, ": ", n, "; ");
  RecordProperty("answers", counts);
  std::printf("%d clients in %s: %s\n", kClients, absl::FormatDuration(took).c_str(),
              counts.c_str());
  EXPECT_EQ(by_status[-1], 0) << "still waiting after " << bound << ": " << counts;
  EXPECT_EQ(by_status[0], 0) << "closed without an HTTP answer: " << counts;
  EXPECT_EQ(by_status[200] + by_status[429] + by_status[503], kClients) << counts;
  EXPECT_GT(by_status[200], 0) << counts;
  // The router is still serving after the crowd.
  EXPECT_EQ(api_testing::HttpGet(http_port, "/health").status, 200);
}

}  // namespace
}  // namespace shardserve::e2e
