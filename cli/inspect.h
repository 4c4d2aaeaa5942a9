// `shardserve inspect ...`: offline inspection of a model.
//
//   shardserve inspect --model PATH [--json]
//
// shows the model's metadata without loading its weights: architecture, layers, attention shape,
// context, parameters by stored type, tokenizer and chat template, for a Hugging Face folder or
// a GGUF file.
//
//   shardserve inspect tokenize --model PATH --text TEXT [--no-bos] [--json]
//
// prints {"ids": [...], "pieces": [...]} (with --json) or one "id<TAB>piece" line per token.
// PATH is a model folder, a folder holding only tokenizer files, or a (vocab-only) GGUF file.
// Both return the process exit status: 0 on success, 2 for bad usage ("error: ..." naming the
// flag), 1 when the model cannot be read; errors are one line on stderr.
#ifndef SHARDSERVE_CLI_INSPECT_H_
#define SHARDSERVE_CLI_INSPECT_H_

namespace shardserve {

// argv[0] is the command's name ("shardserve inspect"); argv[1] "tokenize" or a flag.
int InspectMain(int argc, char** argv);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_INSPECT_H_
