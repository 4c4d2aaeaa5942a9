// `shardserve inspect ...`: offline inspection of a model's tokenizer.
//
//   shardserve inspect tokenize --model PATH --text TEXT [--no-bos] [--json]
//
// prints {"ids": [...], "pieces": [...]} (with --json) or one "id<TAB>piece" line per token.
// PATH is a model folder, a folder holding only tokenizer files, or a (vocab-only) GGUF file.
// Returns the process exit status: 0 on success, 2 for bad usage, 1 when the model cannot be
// loaded; errors are one line on stderr.
#ifndef SHARDSERVE_CLI_INSPECT_H_
#define SHARDSERVE_CLI_INSPECT_H_

namespace shardserve {

// argv[0] is "inspect" (or the program name); argv[1] the subcommand.
int InspectMain(int argc, char** argv);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_INSPECT_H_
