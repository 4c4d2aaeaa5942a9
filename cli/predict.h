// `shardserve predict`: the cost model's step times for a pipeline of a model on a device, and
// its analytic throughput bound (model/cost_model.h; the same figures --backend sim workers
// take and bench/scale.sh compares measurements with).
#ifndef SHARDSERVE_CLI_PREDICT_H_
#define SHARDSERVE_CLI_PREDICT_H_

namespace shardserve {

int PredictMain(int argc, char** argv);

}  // namespace shardserve

#endif  // SHARDSERVE_CLI_PREDICT_H_
