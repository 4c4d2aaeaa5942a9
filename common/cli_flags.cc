#include "common/cli_flags.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/git_commit.h"

#ifndef SHARDSERVE_VERSION
#define SHARDSERVE_VERSION "unknown"
#endif
#ifndef SHARDSERVE_BUILD_TYPE
#define SHARDSERVE_BUILD_TYPE "unknown"
#endif
#ifndef SHARDSERVE_BUILT_WITH_CUDA
#define SHARDSERVE_BUILT_WITH_CUDA 0
#endif

namespace shardserve {
namespace {

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The first "--flag" in argv that `app` does not know (one misspelt flag also makes a required
// one look missing: the misspelling is the error to report).
std::string UnknownFlag(const CLI::App& app, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (!absl::StartsWith(arg, "--") || arg.size() < 3) continue;
    const std::string name = arg.substr(0, arg.find('='));
    if (app.get_option_no_throw(name) == nullptr) return name;
  }
  return "";
}

}  // namespace

std::string VersionString() {
  return absl::StrCat("shardserve ", SHARDSERVE_VERSION, " (commit ", SHARDSERVE_GIT_COMMIT, ", ",
                      SHARDSERVE_BUILD_TYPE, ", CUDA ", SHARDSERVE_BUILT_WITH_CUDA ? "yes" : "no",
                      ")");
}

std::string ClosestFlag(const CLI::App& app, const std::string& flag) {
  std::string best;
  size_t best_distance = 3;
  for (const CLI::Option* option : app.get_options()) {
    for (const std::string& name : option->get_lnames()) {
      const size_t d = EditDistance(flag, "--" + name);
      if (d < best_distance) {
        best_distance = d;
        best = "--" + name;
      }
    }
  }
  return best;
}

std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv) {
  app.set_version_flag("--version", VersionString(), "print the version and build, and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::string message = e.what();
    if (const std::string flag = UnknownFlag(app, argc, argv); !flag.empty()) {
      message = absl::StrCat("unknown flag ", flag);
      const std::string suggestion = ClosestFlag(app, flag);
      if (!suggestion.empty()) absl::StrAppend(&message, " (did you mean ", suggestion, "?)");
    }
    std::fprintf(stderr, "error: %s; see %s --help\n", message.c_str(), app.get_name().c_str());
    return 2;
  }
  return std::nullopt;
}

}  // namespace shardserve
