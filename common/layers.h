// One spelling for a range of layers wherever a person reads one: logs, errors, metric labels,
// `predict` and `bench` tables, and the --layers flag. Ranges are half-open in code
// ([begin, end)); people see the first and last layer, both included, as --layers takes them:
// layers [0, 3) is "0-2".
#ifndef SHARDSERVE_COMMON_LAYERS_H_
#define SHARDSERVE_COMMON_LAYERS_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace shardserve {

inline std::string LayerRangeText(int64_t begin, int64_t end) {
  return absl::StrCat(begin, "-", end - 1);
}

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_LAYERS_H_
