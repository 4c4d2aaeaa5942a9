// `shardserve generate` and `shardserve synth`: the single-process commands.
#ifndef SHARDSERVE_CLI_GENERATE_H_
#define SHARDSERVE_CLI_GENERATE_H_

namespace shardserve {

int GenerateMain(int argc, char** argv);
int SynthMain(int argc, char** argv);
int ExportGgufMain(int argc, char** argv);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_GENERATE_H_
