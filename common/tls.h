// TLS for shardserve's gRPC traffic: credentials from PEM files named by --tls-cert, --tls-key
// and --tls-ca.
//
// A server with a certificate and key serves TLS; with a CA as well it requires and verifies a
// client certificate (mutual TLS), which is how workers accept control and activation RPCs only
// from routers and workers holding a certificate of the cluster's CA. A client with a CA
// verifies the server against it, and presents its own certificate when it has one. Without any
// of the files everything stays plaintext (the default, for loopback and trusted networks).
//
// The process-wide channel credentials are what this process uses for every gRPC channel it
// opens: a router toward its workers, a worker toward the next stage, the CLI toward a router.
// Set once at startup, before any channel is made.
#ifndef SHARDSERVE_COMMON_TLS_H_
#define SHARDSERVE_COMMON_TLS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace shardserve {

struct TlsFiles {
  std::string cert;  // PEM certificate chain (--tls-cert)
  std::string key;   // PEM private key (--tls-key)
  std::string ca;    // PEM CA bundle (--tls-ca)
  bool empty() const { return cert.empty() && key.empty() && ca.empty(); }
};

// INVALID_ARGUMENT naming the flag when a file is missing, unreadable or not PEM, or when only
// one of cert and key is given.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, bool require_client_cert);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files);

// Plaintext until set.
void SetProcessChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials);
std::shared_ptr<grpc::ChannelCredentials> ProcessChannelCredentials();

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_TLS_H_
