// `shardserve up`: a local cluster on this machine. Spawns N shardserve-worker processes and a
// shardserve-router (found next to this executable), waits until the router's health says
// SERVING, prints where to connect and serves until SIGINT/SIGTERM, then stops its children.
// With --prompt it streams one completion once ready, then shuts the cluster down.
//
// Model: --model, else $SHARDSERVE_MODEL, else ../shared/models/stories260K (from the current
// folder, then from the repository holding this executable), else models/, else a small
// synthetic model written with `shardserve synth` into a temporary folder.
#ifndef SHARDSERVE_CLI_UP_H_
#define SHARDSERVE_CLI_UP_H_

namespace shardserve {

int UpMain(int argc, char** argv);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_UP_H_
