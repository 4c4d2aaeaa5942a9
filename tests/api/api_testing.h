// Helpers for the API tests: running the Node and Python clients against a test cluster,
// HTTP calls, and reading Prometheus text.
#ifndef SHARDSERVE_TESTS_API_API_TESTING_H_
#define SHARDSERVE_TESTS_API_API_TESTING_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardserve::api_testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};
// `relative` (a path in the source tree) as an absolute path.
std::string SourcePath(const std::string& relative);
// Runs `command` with /bin/sh from the source tree root.
CommandResult Run(const std::string& command);

// The folder holding clients/node's node_modules (installed by tests/api/npm_ci.sh).
absl::StatusOr<std::string> NodeModules();
// The folder holding tests/console's node_modules (puppeteer-core).
absl::StatusOr<std::string> ConsoleNodeModules();
// The folder holding tests/structured's node_modules (openai, ajv, ajv-formats).
absl::StatusOr<std::string> StructuredNodeModules();
// The folder holding Python stubs for shardserve.v1, KServe v2, health and reflection.
absl::StatusOr<std::string> PythonStubs();
// A Python interpreter with Debian's grpcio and protobuf.
std::string Python();

struct HttpResult {
  int status = 0;
  std::string body;
};
HttpResult HttpGet(int port, const std::string& path, const std::string& api_key = "");
HttpResult HttpPost(int port, const std::string& path, const std::string& body,
                    const std::string& api_key = "");

// One sample line of Prometheus text.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
// The sample lines of `text` (comments skipped); a line that does not parse is left out.
std::vector<MetricSample> ParseMetrics(const std::string& text);
// PromQL's sum(selector): the total of the samples named `name` whose labels include the
// selector's (`name{a="x"}`, or "name" alone for every sample of that name); -1 when none
// matches. Labels the selector leaves out (model_name, layers) do not matter.
double MetricValue(const std::string& text, const std::string& selector);
// Exit code and output of `promtool check metrics` on `text`.
CommandResult Promtool(const std::string& text);

}  // namespace shardserve::api_testing

#endif  // SHARDSERVE_TESTS_API_API_TESTING_H_
