#include "common/cluster_auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"

namespace shardserve {
namespace {

absl::Mutex secret_mu;
std::string* process_secret ABSL_GUARDED_BY(secret_mu) = nullptr;

}  // namespace

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

absl::StatusOr<std::string> ReadClusterSecret(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("--cluster-secret-file: cannot read ", path));
  }
  std::string data(kMaxClusterSecretBytes + 2, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  const std::string secret(absl::StripAsciiWhitespace(data));
  if (secret.size() < kMinClusterSecretBytes || secret.size() > kMaxClusterSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cluster-secret-file: ", path, " must hold a secret of ", kMinClusterSecretBytes, " to ",
        kMaxClusterSecretBytes, " bytes (e.g. `openssl rand -hex 32 > ", path, "`)"));
  }
  return secret;
}

absl::Status WriteClusterSecret(const std::string& path) {
  std::random_device random;
  std::string hex;
  for (int i = 0; i < 8; ++i) absl::StrAppend(&hex, absl::Hex(random(), absl::kZeroPad8));
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", path));
  const std::string line = hex + "\n";
  const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

void AddClusterAuthFlags(CLI::App& app, ClusterAuthFlags* flags) {
  app.add_option("--cluster-secret-file", flags->secret_file,
                 "file holding the cluster's shared secret (16+ bytes; the same file on every "
                 "router and worker): worker RPCs and worker announcements must carry it")
      ->envname(kClusterSecretEnv);
  app.add_flag("--insecure-cluster", flags->insecure,
               "run without a cluster credential (no secret, no mutual TLS): anyone who reaches "
               "a worker port can drive the worker");
}

grpc::Status ClusterAuthenticator::Check(const grpc::ServerContext* context) const {
  if (context == nullptr || insecure_) return grpc::Status::OK;
  if (mtls_) {
    auto auth = context->auth_context();
    if (auth == nullptr || !auth->IsPeerAuthenticated()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "a client certificate of the cluster is required");
    }
  }
  if (secret_.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kClusterSecretMetadata);
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this is a cluster-internal service: the cluster credential is missing");
  }
  if (!ConstantTimeEquals(absl::string_view(it->second.data(), it->second.size()), secret_)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "wrong cluster credential");
  }
  return grpc::Status::OK;
}

absl::StatusOr<ClusterAuthenticator> ResolveClusterAuth(const ClusterAuthFlags& flags,
                                                        const TlsFiles& tls,
                                                        absl::string_view binary) {
  std::string secret;
  if (!flags.secret_file.empty()) {
    auto read = ReadClusterSecret(flags.secret_file);
    if (!read.ok()) return read.status();
    secret = std::move(*read);
  }
  const bool mtls = !tls.ca.empty() && !tls.cert.empty() && !tls.key.empty();
  if (flags.insecure) {
    if (!secret.empty() || mtls) {
      return absl::InvalidArgumentError(
          "--insecure-cluster contradicts --cluster-secret-file / mutual TLS: choose one");
    }
    LOG(WARNING) << binary
                 << ": --insecure-cluster: no cluster credential; anyone who reaches a worker "
                    "port can load shards, read activations and drain workers";
  } else if (secret.empty() && !mtls) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no cluster credential: pass --cluster-secret-file FILE (the same secret on every router "
        "and worker; or set $",
        kClusterSecretEnv,
        "), or --tls-ca with --tls-cert and --tls-key for mutual TLS; --insecure-cluster runs "
        "without one"));
  }
  SetProcessClusterSecret(secret);
  return ClusterAuthenticator(std::move(secret), mtls, flags.insecure);
}

absl::StatusOr<ProcessCredentials> SetUpProcessCredentials(const TlsFiles& tls,
                                                           const ClusterAuthFlags& flags,
                                                           bool require_client_cert,
                                                           absl::string_view binary) {
  ProcessCredentials out;
  auto server = MakeServerCredentials(tls, require_client_cert);
  if (!server.ok()) return server.status();
  out.server = std::move(*server);
  auto channel = MakeChannelCredentials(tls);
  if (!channel.ok()) return channel.status();
  SetProcessChannelCredentials(std::move(*channel));
  auto cluster = ResolveClusterAuth(flags, tls, binary);
  if (!cluster.ok()) return cluster.status();
  out.cluster = std::move(*cluster);
  return out;
}

void SetProcessClusterSecret(std::string secret) {
  absl::MutexLock lock(&secret_mu);
  delete process_secret;
  process_secret = new std::string(std::move(secret));
}

void AttachClusterCredential(grpc::ClientContext* context) {
  absl::MutexLock lock(&secret_mu);
  if (process_secret != nullptr && !process_secret->empty()) {
    context->AddMetadata(kClusterSecretMetadata, *process_secret);
  }
}

}  // namespace shardserve
