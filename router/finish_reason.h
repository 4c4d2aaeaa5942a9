// The OpenAI-style name of a finish reason ("stop", "length", "tool_calls"; "" while
// unfinished): what the HTTP
// API sends as finish_reason and `shardserve complete --json` prints. Header-only, so that the
// CLI can use it without linking the router.
#ifndef SHARDSERVE_ROUTER_FINISH_REASON_H_
#define SHARDSERVE_ROUTER_FINISH_REASON_H_

#include <string>

#include "shardserve/v1/inference.pb.h"

namespace shardserve {

inline std::string FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_TOOL_CALLS:
      return "tool_calls";
    default:
      return "";
  }
}

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_FINISH_REASON_H_
