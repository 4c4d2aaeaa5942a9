#include "router/discovery.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace shardserve {
namespace {

constexpr char kDnsPrefix[] = "dns:///";

}  // namespace

bool IsDnsWorkers(const std::string& spec) { return absl::StartsWith(spec, kDnsPrefix); }

absl::StatusOr<std::vector<std::string>> ResolveWorkers(const std::string& spec) {
  if (!IsDnsWorkers(spec)) {
    std::vector<std::string> out = absl::StrSplit(spec, ',', absl::SkipEmpty());
    if (out.empty()) return absl::InvalidArgumentError("--workers: no worker address");
    // One worker serves one stage: an address named twice would be two stages on one worker.
    for (size_t i = 0; i < out.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (out[i] == out[j]) {
          return absl::InvalidArgumentError(
              absl::StrCat("--workers: ", out[i], " is listed twice (entries ", j + 1, " and ",
                           i + 1, "); each worker serves one stage of one pipeline"));
        }
      }
    }
    return out;
  }
  const std::string target = spec.substr(sizeof(kDnsPrefix) - 1);
  const size_t colon = target.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(target.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers: '", spec, "' is not dns:///NAME:PORT"));
  }
  const std::string host = target.substr(0, colon);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("--workers: cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof(ip));
      out.push_back(absl::StrCat(ip, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip, sizeof(ip));
      out.push_back(absl::StrCat("[", ip, "]:", port));
    }
  }
  freeaddrinfo(found);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace shardserve
