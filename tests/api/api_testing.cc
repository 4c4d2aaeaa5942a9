#include "tests/api/api_testing.h"

#include <httplib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace shardserve::api_testing {
namespace fs = std::filesystem;

std::string SourcePath(const std::string& relative) {
  return absl::StrCat(SHARDSERVE_SOURCE_DIR, "/", relative);
}

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
CommandResult RunFilling(const std::string& dir, const std::string& script,
                         const std::string& arg = "") {
  return Run(absl::StrCat("flock '", dir, ".lock' ", script, " '", dir, "'",
                          arg.empty() ? "" : absl::StrCat(" '", arg, "'")));
}

absl::StatusOr<std::string> NodeModules() {
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/api-node");
  CommandResult r = RunFilling(dir, "tests/api/npm_ci.sh");
  if (r.exit_code != 0) return absl::UnavailableError(absl::StrCat("npm ci: ", r.output));
  return dir + "/node_modules";
}

absl::StatusOr<std::string> ConsoleNodeModules() {
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/console-node");
  CommandResult r = RunFilling(dir, "tests/api/npm_ci.sh", "tests/console");
  if (r.exit_code != 0) return absl::UnavailableError(absl::StrCat("npm ci: ", r.output));
  return dir + "/node_modules";
}

absl::StatusOr<std::string> StructuredNodeModules() {
  const std::string dir = absl::StrCat(SHARDSERVE_BINARY_DIR, "/structured-node");
  CommandResult r = RunFilling(dir, "tests/api/npm_ci.sh", "tests/structured");
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

namespace {

// `name{k="v",...} value`, or without a value when `with_value` is false.
std::optional<MetricSample> ParseSample(absl::string_view line, bool with_value) {
  MetricSample s;
  size_t i = 0;
  while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
  s.name = std::string(line.substr(0, i));
  if (s.name.empty()) return std::nullopt;
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      const size_t eq = line.find("=\"", i);
      if (eq == absl::string_view::npos) return std::nullopt;
      std::string key(line.substr(i, eq - i));
      std::string value;
      size_t j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < line.size()) {
          ++j;
          value += line[j] == 'n' ? '\n' : line[j];
        } else {
          value += line[j];
        }
      }
      if (j >= line.size()) return std::nullopt;
      s.labels[key] = value;
      i = j + 1;
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return std::nullopt;
    ++i;  // '}'
  }
  if (!with_value) return i == line.size() ? std::optional(s) : std::nullopt;
  if (i >= line.size() || line[i] != ' ') return std::nullopt;
  if (!absl::SimpleAtod(line.substr(i + 1), &s.value)) return std::nullopt;
  return s;
}

}  // namespace

std::vector<MetricSample> ParseMetrics(const std::string& text) {
  std::vector<MetricSample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (auto s = ParseSample(line, /*with_value=*/true)) out.push_back(std::move(*s));
  }
  return out;
}

double MetricValue(const std::string& text, const std::string& selector) {
  auto want = ParseSample(selector, /*with_value=*/false);
  if (!want) return -1;
  double total = 0;
  bool found = false;
  for (const MetricSample& s : ParseMetrics(text)) {
    if (s.name != want->name) continue;
    bool match = true;
    for (const auto& [key, value] : want->labels) {
      auto it = s.labels.find(key);
      if (it == s.labels.end() || it->second != value) match = false;
    }
    if (!match) continue;
    total += s.value;
    found = true;
  }
  return found ? total : -1;
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
