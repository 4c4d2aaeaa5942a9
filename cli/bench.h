// `shardserve bench`: a closed-loop load generator against a shardserve router.
//
// C client threads each send requests back to back (prompts of P random token ids, exactly N
// new tokens with ignore_eos) until --requests have been sent, then it reports output
// throughput, time to first token and inter-token latency (p50, p99) and the error count, as
// text or --json.
#ifndef SHARDSERVE_CLI_BENCH_H_
#define SHARDSERVE_CLI_BENCH_H_

namespace shardserve {

int BenchMain(int argc, char** argv);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_BENCH_H_
