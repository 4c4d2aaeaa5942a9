// The cluster credential: what a worker (and the router's RegisterWorker) asks of a caller before
// doing anything for it.
//
// Inside a cluster only its routers and workers may drive a worker: load a shard, link it to
// another stage, send it plans or activations, drain it or read its stats. A caller proves it
// belongs in one of two ways, chosen per process by flags:
//   - mutual TLS (--tls-ca with --tls-cert/--tls-key): the TLS handshake already refuses a peer
//     without a certificate of the cluster's CA;
//   - a shared secret (--cluster-secret-file, or $SHARDSERVE_CLUSTER_SECRET_FILE), sent by
//     every router and worker as the `x-shardserve-cluster-secret` metadata of each call and
//     compared in constant time. `shardserve up` writes one for its local cluster; on
//     Kubernetes it is a Secret mounted into every pod.
// With both, both are required. Running with neither needs --insecure-cluster, which logs a
// warning: anyone who reaches the port can then drive the worker.
//
// Missing secret: UNAUTHENTICATED; wrong secret: PERMISSION_DENIED. Neither message echoes what
// the caller sent or anything about the worker's state.
#ifndef SHARDSERVE_COMMON_CLUSTER_AUTH_H_
#define SHARDSERVE_COMMON_CLUSTER_AUTH_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tls.h"

namespace shardserve {

inline constexpr char kClusterSecretMetadata[] = "x-shardserve-cluster-secret";
inline constexpr char kClusterSecretEnv[] = "SHARDSERVE_CLUSTER_SECRET_FILE";
// Secrets shorter than this are refused (a guessable secret is no credential).
inline constexpr size_t kMinClusterSecretBytes = 16;
inline constexpr size_t kMaxClusterSecretBytes = 4096;

// Equal contents, in time that depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// The secret in `path`, surrounding whitespace removed. INVALID_ARGUMENT naming
// --cluster-secret-file when unreadable, shorter than kMinClusterSecretBytes or longer than
// kMaxClusterSecretBytes.
absl::StatusOr<std::string> ReadClusterSecret(const std::string& path);

// Writes a fresh random secret (64 hex digits) to `path`, mode 0600.
absl::Status WriteClusterSecret(const std::string& path);

struct ClusterAuthFlags {
  std::string secret_file;  // --cluster-secret-file (or $SHARDSERVE_CLUSTER_SECRET_FILE)
  bool insecure = false;    // --insecure-cluster
};

// Adds --cluster-secret-file and --insecure-cluster.
void AddClusterAuthFlags(CLI::App& app, ClusterAuthFlags* flags);

// Server side: checks each call's credential.
class ClusterAuthenticator {
 public:
  // `mtls`: the server requires client certificates of the cluster CA.
  ClusterAuthenticator(std::string secret, bool mtls, bool insecure)
      : secret_(std::move(secret)), mtls_(mtls), insecure_(insecure) {}

  // OK for a caller of the cluster. A null context is an in-process call (trusted).
  grpc::Status Check(const grpc::ServerContext* context) const;

  bool insecure() const { return insecure_; }
  bool has_secret() const { return !secret_.empty(); }

 private:
  std::string secret_;
  bool mtls_;
  bool insecure_;
};

// From the flags of `binary`: reads the secret (also making it the one this process sends on
// every cluster call, see AttachClusterCredential) and checks that some credential is configured
// (a secret, or mutual TLS: `tls` with a CA, certificate and key). INVALID_ARGUMENT with what to
// pass otherwise. Logs a warning with --insecure-cluster.
absl::StatusOr<ClusterAuthenticator> ResolveClusterAuth(const ClusterAuthFlags& flags,
                                                        const TlsFiles& tls,
                                                        absl::string_view binary);

// What a router or worker needs of its TLS and cluster-credential flags: the credentials its
// gRPC server serves with (client certificates required when `require_client_cert` and a CA is
// given), and the authenticator for its cluster-internal RPCs. Also sets this process's channel
// credentials and cluster secret for every channel it opens.
struct ProcessCredentials {
  std::shared_ptr<grpc::ServerCredentials> server;
  ClusterAuthenticator cluster{"", false, false};
};
absl::StatusOr<ProcessCredentials> SetUpProcessCredentials(const TlsFiles& tls,
                                                           const ClusterAuthFlags& flags,
                                                           bool require_client_cert,
                                                           absl::string_view binary);

// The secret this process sends ("" for none); set by ResolveClusterAuth.
void SetProcessClusterSecret(std::string secret);
// Adds this process's cluster secret (if any) to an outgoing call to a worker or router control
// service.
void AttachClusterCredential(grpc::ClientContext* context);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_CLUSTER_AUTH_H_
