// --tls-cert, --tls-key and --tls-ca on a CLI11 command line (see common/tls.h for what each
// binary does with them).
#ifndef SHARDSERVE_COMMON_TLS_FLAGS_H_
#define SHARDSERVE_COMMON_TLS_FLAGS_H_

#include <string>

#include "CLI/CLI.hpp"
#include "common/tls.h"

namespace shardserve {

inline void AddTlsFlags(CLI::App& app, TlsFiles* tls, const std::string& cert_help,
                        const std::string& ca_help) {
  app.add_option("--tls-cert", tls->cert, cert_help);
  app.add_option("--tls-key", tls->key, "PEM private key of --tls-cert");
  app.add_option("--tls-ca", tls->ca, ca_help);
}

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_TLS_FLAGS_H_
