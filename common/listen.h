// Listen addresses and servers that never share a port.
//
// Every server shardserve runs (gRPC on the router and workers, the router's HTTP front, the
// workers' /metrics) binds its port exclusively: gRPC's SO_REUSEPORT is turned off and the HTTP
// servers set only SO_REUSEADDR, so a second process started on a taken port fails instead of
// silently sharing the connections. Port 0 asks for any free port; the bound one is logged.
#ifndef SHARDSERVE_COMMON_LISTEN_H_
#define SHARDSERVE_COMMON_LISTEN_H_

#include <grpcpp/grpcpp.h>

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace shardserve {

// "host:port", "[v6]:port" or ":port" (all interfaces) -> (host, port), port in 0..65535.
// INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address,
                                                          const std::string& flag);

// Validates `address` as a listen address for `flag` (see SplitHostPort).
absl::Status ValidateListenAddress(const std::string& address, const std::string& flag);
// The same for each (address, flag) pair whose address is set.
absl::Status ValidateListenAddresses(
    std::initializer_list<std::pair<const std::string&, const char*>> addresses);

// Options every gRPC server gets: no SO_REUSEPORT.
void ConfigureExclusivePort(grpc::ServerBuilder* builder);

// Socket options for an HTTP server's listening socket: SO_REUSEADDR only (httplib's default
// adds SO_REUSEPORT).
void ExclusiveSocketOptions(int fd);

// The error for a server that could not bind: names the flag and the port.
absl::Status CannotListen(const std::string& flag, const std::string& address);

// Writes `port` (and a newline) to `path` atomically (a temporary file, then a rename), so a
// reader sees the whole number or no file. A process writes it only once it holds the port: a
// launcher that reads it knows the process, not a stranger on the same port, answers there.
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_LISTEN_H_
