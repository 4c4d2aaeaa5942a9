#include "tests/api/api_testing.h"

#include <httplib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace shardserve::api_testing {
namespace fs = std::filesystem;

CommandResult Run(const std::string& command) {
  CommandResult r;
  const std::string full =
      absl::StrCat("cd '", SHARDSERVE_SOURCE_DIR, "' && ( ", command, " ) 2>&1");
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Runs the script that fills `dir` under an exclusive lock on `dir`.lock: test processes that
// ctest runs side by side must not use (or install over) a folder another one is installing.
CommandResult RunFilling(const std::string& dir, const std::string& script) {
  return Run(absl::StrCat("flock '", dir, ".lock' ", script, " '", dir, "'"));
}

absl::StatusOr<std::string> NodeModules() {
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/api-node");
  CommandResult r = RunFilling(dir, "tests/api/npm_ci.sh");
  if (r.exit_code != 0) return absl::UnavailableError(absl::StrCat("npm ci: ", r.output));
  return dir + "/node_modules";
}

absl::StatusOr<std::string> PythonStubs() {
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/api-python");
  CommandResult r = RunFilling(dir, "clients/python/generate_stubs.sh");
  if (r.exit_code != 0) return absl::UnavailableError(absl::StrCat("stubs: ", r.output));
  return dir;
}

std::string Python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

namespace {
httplib::Headers Auth(const std::string& api_key) {
  if (api_key.empty()) return {};
  return {{"Authorization", "Bearer " + api_key}};
}
}  // namespace

HttpResult HttpGet(int port, const std::string& path, const std::string& api_key) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  auto res = client.Get(path.c_str(), Auth(api_key));
  if (!res) return {};
  return {res->status, res->body};
}

HttpResult HttpPost(int port, const std::string& path, const std::string& body,
                    const std::string& api_key) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  auto res = client.Post(path.c_str(), Auth(api_key), body, "application/json");
  if (!res) return {};
  return {res->status, res->body};
}

double MetricValue(const std::string& text, const std::string& sample) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() > sample.size() && line.substr(0, sample.size()) == sample &&
        line[sample.size()] == ' ') {
      double v = 0;
      if (absl::SimpleAtod(line.substr(sample.size() + 1), &v)) return v;
    }
  }
  return -1;
}

CommandResult Promtool(const std::string& text) {
  const std::string path =
      absl::StrCat(SHARDSERVE_BINARY_DIR, "/api-metrics-", ::getpid(), "-", std::rand(), ".txt");
  std::ofstream(path) << text;
  CommandResult r = Run(absl::StrCat("promtool check metrics < '", path, "'"));
  fs::remove(path);
  return r;
}

}  // namespace shardserve::api_testing
