// TLS and mutual TLS: a cluster whose router and workers all run with --tls-cert/--tls-key/
// --tls-ca (certificates made here with openssl) serves exactly the plaintext output; plaintext
// clients are refused; workers refuse callers without a certificate of the cluster's CA.
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/tls.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

namespace fs = std::filesystem;

// A CA, and a certificate it signs for 127.0.0.1 usable as server and client; also a second,
// unrelated CA with a certificate of its own.
class Tls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(SHARDSERVE_TEST_TMP, "/tls-", getpid()));
    fs::create_directories(*dir_);
    const std::string d = *dir_;
    const std::string ext = d + "/ext.cnf";
    FILE* f = std::fopen(ext.c_str(), "w");
    std::fputs(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n",
        f);
    std::fclose(f);
    for (const std::string name : {"ca", "rogue"}) {
      Sh(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=", name,
                      " -keyout ", d, "/", name, ".key -out ", d, "/", name, ".crt"));
      Sh(absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout ", d, "/",
                      name, "-node.key -out ", d, "/", name, "-node.csr"));
      Sh(absl::StrCat("openssl x509 -req -days 2 -in ", d, "/", name, "-node.csr -CA ", d, "/",
                      name, ".crt -CAkey ", d, "/", name, ".key -CAcreateserial -extfile ", ext,
                      " -out ", d, "/", name, "-node.crt"));
    }
  }
  static void TearDownTestSuite() {
    SetProcessChannelCredentials(grpc::InsecureChannelCredentials());
    fs::remove_all(*dir_);
    delete dir_;
  }
  static void Sh(const std::string& cmd) {
    ASSERT_EQ(std::system((cmd + " >/dev/null 2>&1").c_str()), 0) << cmd;
  }
  static TlsFiles Files(const std::string& ca, const std::string& node) {
    return {.cert = *dir_ + "/" + node + "-node.crt",
            .key = *dir_ + "/" + node + "-node.key",
            .ca = *dir_ + "/" + ca + ".crt"};
  }
  static std::vector<std::string> Flags() {
    const TlsFiles f = Files("ca", "ca");
    return {"--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.ca};
  }
  static void UseCredentials(const TlsFiles& files) {
    auto c = MakeChannelCredentials(files);
    ASSERT_TRUE(c.ok()) << c.status();
    SetProcessChannelCredentials(*c);
  }
  static std::string* dir_;
};
std::string* Tls::dir_ = nullptr;

TEST_F(Tls, MutualTlsClusterServesTheSameOutput) {
  UseCredentials(Files("ca", "ca"));
  Cluster cluster(
      {.model = Stories260K(), .stages = 2, .worker_args = Flags(), .router_args = Flags()});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto ref = RunGenerate(Stories260K(), "Once upon a time", 32, 0, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto got = RunCompletion(cluster.router_address(), TextRequest("Once upon a time", 32, 0, 0),
                           absl::Seconds(30), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->ids, ref->ids);

  // A TLS client with only the CA (no certificate of its own) may use the router's API.
  UseCredentials({.cert = "", .key = "", .ca = Files("ca", "ca").ca});
  EXPECT_TRUE(RunCompletion(cluster.router_address(), TextRequest("Hi", 4, 0, 0), absl::Seconds(10),
                            nullptr)
                  .ok());
  // ... but not a worker's: workers require a certificate of the cluster's CA.
  auto no_cert = WorkerStats(cluster.worker_addresses()[0]);
  EXPECT_FALSE(no_cert.ok());
  UseCredentials(Files("ca", "rogue"));  // a certificate from another CA
  EXPECT_FALSE(WorkerStats(cluster.worker_addresses()[0]).ok());
  UseCredentials(Files("ca", "ca"));
  auto stats = WorkerStats(cluster.worker_addresses()[0]);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->tokens(), 0u);

  // Plaintext clients are refused.
  SetProcessChannelCredentials(grpc::InsecureChannelCredentials());
  auto plain = RunCompletion(cluster.router_address(), TextRequest("Hi", 4, 0, 0), absl::Seconds(5),
                             nullptr);
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kUnavailable) << plain.status();
}

// A router whose certificate the workers' CA did not sign never gets a pipeline.
TEST_F(Tls, WorkersRefuseARouterFromAnotherCa) {
  UseCredentials(Files("ca", "ca"));
  const TlsFiles rogue = Files("ca", "rogue");
  Cluster cluster(
      {.model = Stories260K(),
       .stages = 1,
       .worker_args = Flags(),
       .router_args = {"--tls-cert", rogue.cert, "--tls-key", rogue.key, "--tls-ca", rogue.ca}});
  EXPECT_FALSE(cluster.WaitServing(absl::Seconds(4)).ok());
  EXPECT_TRUE(cluster.router().alive());
}

TEST(TlsFlags, BadFilesNameTheFlag) {
  auto missing = MakeServerCredentials(
      {.cert = "/nonexistent.crt", .key = "/nonexistent.key", .ca = ""}, true);
  EXPECT_NE(missing.status().message().find("--tls-cert"), std::string::npos) << missing.status();
  auto half = MakeChannelCredentials({.cert = "/x.crt", .key = "", .ca = ""});
  EXPECT_NE(half.status().message().find("--tls-key"), std::string::npos) << half.status();
  auto no_cert = MakeServerCredentials({.cert = "", .key = "", .ca = "/x.crt"}, true);
  EXPECT_FALSE(no_cert.ok());
  CommandResult r = RunCommand({BinPath("shardserve-worker"), "--listen", "127.0.0.1:0",
                                "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"},
                               "", absl::Seconds(10));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--tls-cert: cannot read /nonexistent.crt"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace shardserve::e2e
