#include "common/tls.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace shardserve {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not a PEM file"));
  }
  return pem;
}

absl::Status CheckPair(const TlsFiles& files) {
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  return absl::OkStatus();
}

absl::Mutex process_mu;
std::shared_ptr<grpc::ChannelCredentials>* process_credentials ABSL_GUARDED_BY(process_mu) =
    nullptr;

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, bool require_client_cert) {
  if (files.empty()) return grpc::InsecureServerCredentials();
  if (absl::Status s = CheckPair(files); !s.ok()) return s;
  if (files.cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-ca without --tls-cert and --tls-key: a server needs "
        "its own certificate to serve TLS");
  }
  grpc::SslServerCredentialsOptions options(
      files.ca.empty()      ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
      : require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                            // Optional, verified when presented: public clients need none,
                            // cluster members (announcing workers) are recognised by theirs.
                            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPem(files.cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(files.key, "--tls-key");
  if (!key.ok()) return key.status();
  pair.cert_chain = std::move(*cert);
  pair.private_key = std::move(*key);
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!files.ca.empty()) {
    auto ca = ReadPem(files.ca, "--tls-ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = std::move(*ca);
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files) {
  if (files.empty()) return grpc::InsecureChannelCredentials();
  if (absl::Status s = CheckPair(files); !s.ok()) return s;
  grpc::SslCredentialsOptions options;
  if (!files.ca.empty()) {
    auto ca = ReadPem(files.ca, "--tls-ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = std::move(*ca);
  }
  if (!files.cert.empty()) {
    auto cert = ReadPem(files.cert, "--tls-cert");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(files.key, "--tls-key");
    if (!key.ok()) return key.status();
    options.pem_cert_chain = std::move(*cert);
    options.pem_private_key = std::move(*key);
  }
  return grpc::SslCredentials(options);
}

void SetProcessChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  absl::MutexLock lock(&process_mu);
  delete process_credentials;
  process_credentials = new std::shared_ptr<grpc::ChannelCredentials>(std::move(credentials));
}

std::shared_ptr<grpc::ChannelCredentials> ProcessChannelCredentials() {
  absl::MutexLock lock(&process_mu);
  if (process_credentials == nullptr) return grpc::InsecureChannelCredentials();
  return *process_credentials;
}

}  // namespace shardserve
