// LinkFactory: the links of one kind that need an id handed from the receiving stage to the
// sending one (NCCL: an ncclUniqueId). The worker service asks it for an id in PrepareLink and
// joins with that id in PrepareLink (receiver) and ConnectNext (sender); the router carries the
// id between them (worker.proto), so the router itself never needs CUDA or NCCL.
//
// Implementations: NCCL (worker/nccl_link.h, where NCCL is built) and an in-process fake for
// tests (tests/worker/link_setup_test.cc). All methods are thread-safe.
#ifndef SHARDSERVE_WORKER_LINK_FACTORY_H_
#define SHARDSERVE_WORKER_LINK_FACTORY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/activation_link.h"

namespace shardserve {

struct LinkJoin {
  enum class Role { kSender, kReceiver };
  Role role = Role::kSender;
  std::string peer;          // the other stage's address, for messages and counters
  int64_t max_elements = 0;  // largest payload accepted (rows x cols)
  absl::Duration timeout;    // joining, and each Send / Recv
};

class LinkFactory {
 public:
  virtual ~LinkFactory() = default;
  // "nccl", ... (for messages).
  virtual std::string name() const = 0;
  // Bytes of an id; ids of another length are refused before Join.
  virtual size_t id_bytes() const = 0;
  // A fresh id for one link.
  virtual absl::StatusOr<std::string> NewId() = 0;
  // Joins the link named by `id`; blocks until the other end joins or the timeout passes.
  virtual absl::StatusOr<std::unique_ptr<ActivationLink>> Join(const std::string& id,
                                                               const LinkJoin& join) = 0;
};

// A receiving link whose join is still under way: `join` runs on a thread of its own, and Recv
// waits (within `timeout`) for it before reading from the joined link. A failed join fails every
// call with its status; Close fails them too and closes the joined link.
std::unique_ptr<ActivationLink> NewJoiningLink(
    std::function<absl::StatusOr<std::unique_ptr<ActivationLink>>()> join, std::string peer,
    absl::Duration timeout);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_LINK_FACTORY_H_
