#include "common/listen.h"

#include <sys/socket.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace shardserve {

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address,
                                                          const std::string& flag) {
  const size_t colon = address.rfind(':');
  int port = 0;
  const std::string digits = colon == std::string::npos ? "" : address.substr(colon + 1);
  if (colon == std::string::npos || digits.empty() || digits.size() > 5 ||
      digits.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(digits, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": '", address, "' is not host:port with a port in 1-65535 (0: any free port)"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  return std::make_pair(host, port);
}

absl::Status ValidateListenAddress(const std::string& address, const std::string& flag) {
  return SplitHostPort(address, flag).status();
}

absl::Status ValidateListenAddresses(
    std::initializer_list<std::pair<const std::string&, const char*>> addresses) {
  for (const auto& [address, flag] : addresses) {
    if (address.empty()) continue;
    if (absl::Status s = ValidateListenAddress(address, flag); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void ConfigureExclusivePort(grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

void ExclusiveSocketOptions(int fd) {
  int yes = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

absl::Status CannotListen(const std::string& flag, const std::string& address) {
  auto hp = SplitHostPort(address, flag);
  const std::string port = hp.ok() ? std::to_string(hp->second) : address;
  return absl::UnavailableError(absl::StrCat(flag, " ", address, ": cannot listen on port ", port,
                                             " (in use by another process, or not an address "
                                             "of this host)"));
}

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    out.flush();
    if (!out) return absl::InvalidArgumentError("--port-file " + path + ": cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InvalidArgumentError("--port-file " + path + ": " + ec.message());
  return absl::OkStatus();
}

}  // namespace shardserve
