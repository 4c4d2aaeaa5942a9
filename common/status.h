// Status helpers shared by every module.
//
// Modules return absl::Status / absl::StatusOr<T> across their boundaries; nothing throws across
// a library boundary. Debian's Abseil (20220623) has no status macros of its own, so they live
// here. CHECK-style aborts are for programmer bugs only, never for input from files or peers.
#ifndef SHARDSERVE_COMMON_STATUS_H_
#define SHARDSERVE_COMMON_STATUS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define SHARDSERVE_CONCAT_INNER_(a, b) a##b
#define SHARDSERVE_CONCAT_(a, b) SHARDSERVE_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                                \
  do {                                                       \
    ::absl::Status shardserve_status_ = (expr);              \
    if (!shardserve_status_.ok()) return shardserve_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates the StatusOr `expr`; on error returns its status,
// otherwise moves the value into `lhs` (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, expr) \
  SHARDSERVE_ASSIGN_OR_RETURN_IMPL_(SHARDSERVE_CONCAT_(shardserve_statusor_, __LINE__), lhs, expr)
#define SHARDSERVE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                      \
  if (!tmp.ok()) return std::move(tmp).status();          \
  lhs = std::move(tmp).value()

namespace shardserve {

// Prefixes a status message with context, keeping the code: "loading layer 3: <message>".
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_STATUS_H_
