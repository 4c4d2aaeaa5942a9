// What every shardserve binary does with its command line: --version, and one error style for
// bad flags ("error: ...", exit status 2, a suggestion for a misspelt flag).
#ifndef SHARDSERVE_COMMON_CLI_FLAGS_H_
#define SHARDSERVE_COMMON_CLI_FLAGS_H_

#include <optional>
#include <string>

#include "CLI/CLI.hpp"

namespace shardserve {

// "shardserve 0.1.0 (commit 1a2b3c4d5e6f, RelWithDebInfo, CUDA yes)".
std::string VersionString();

// Adds --version to `app` and parses argv. nullopt: go on. Otherwise the exit status: 0 after
// --help or --version, 2 after one line on stderr naming the problem, with "did you mean
// --prompt?" for a flag one or two edits away from a real one.
std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv);

// The closest of `app`'s long flags to `flag` within two edits, or "".
std::string ClosestFlag(const CLI::App& app, const std::string& flag);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_CLI_FLAGS_H_
