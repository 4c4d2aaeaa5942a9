// The `shardserve` command: dispatches to one subcommand per verb.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/bench.h"
#include "cli/complete.h"
#include "cli/generate.h"
#include "cli/inspect.h"
#include "cli/predict.h"
#include "cli/up.h"
#include "common/cli_flags.h"

namespace {

struct Command {
  const char* name;
  int (*main)(int, char**);
  const char* help;
};

const Command kCommands[] = {
    {"generate", shardserve::GenerateMain, "generate text in this process (no network)"},
    {"synth", shardserve::SynthMain, "write a random-weight model of a given shape"},
    {"export-gguf", shardserve::ExportGgufMain, "write a model folder as a llama.cpp GGUF file"},
    {"inspect", shardserve::InspectMain, "model metadata and tokenization"},
    {"up", shardserve::UpMain, "start a local router and workers"},
    {"complete", shardserve::CompleteMain, "stream a completion from a server"},
    {"chat", shardserve::ChatMain, "interactive chat with a server"},
    {"bench", shardserve::BenchMain, "load-test a server"},
    {"status", shardserve::StatusMain, "a router's pipelines, stages, load and events"},
    {"predict", shardserve::PredictMain, "predicted step times and throughput bound of a pipeline"},
};

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: shardserve <command> [flags]   (shardserve <command> --help; shardserve "
               "--version)\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  const std::string verb = argv[1];
  if (verb == "--version") {
    std::printf("%s\n", shardserve::VersionString().c_str());
    return 0;
  }
  if (verb == "--help" || verb == "-h" || verb == "help") {
    Usage(stdout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (verb == c.name) {
      std::string name = std::string("shardserve ") + c.name;
      argv[1] = name.data();
      return c.main(argc - 1, argv + 1);
    }
  }
  std::fprintf(stderr, "error: unknown command '%s' (run 'shardserve --help')\n", verb.c_str());
  return 2;
}
