// Built into ThreadSanitizer builds only (cmake -DSHARDSERVE_TSAN=ON, scripts/tsan.sh).
//
// Debian's Abseil is not built with TSan, so absl::Mutex synchronises through atomics TSan
// cannot see, and every access guarded by one would be reported as a race. This file interposes
// the Mutex entry points the project uses: each calls Abseil's own implementation (found with
// dlsym(RTLD_NEXT)) and tells TSan about the happens-before edge it creates: a release before
// the mutex is given up (Unlock, and Await, which waits unlocked), an acquire once it is held.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"

extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);

namespace {

template <typename Fn>
Fn Real(const char* mangled) {
  void* f = dlsym(RTLD_NEXT, mangled);
  if (f == nullptr) {
    std::fprintf(stderr, "tsan shim: %s not found in Abseil\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

#define SHARDSERVE_REAL(type, mangled) static const auto real = Real<type>(mangled)

// Abseil evaluates a waiter's condition while it holds the mutex internally (in the waiter or in
// the thread unlocking), which TSan cannot see: the wrapper brackets each evaluation with an
// acquire and a release of the mutex.
struct Guarded {
  absl::Mutex* mu;
  const absl::Condition* cond;
};

bool EvalAcquired(void* arg) {
  auto* g = static_cast<Guarded*>(arg);
  __tsan_acquire(g->mu);
  const bool met = g->cond->Eval();
  // Whoever evaluated, the lock is released (or handed to the waiter) afterwards.
  __tsan_release(g->mu);
  return met;
}

}  // namespace

namespace absl {
inline namespace debian3 {

void Mutex::Lock() {
  SHARDSERVE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  SHARDSERVE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderLock() {
  SHARDSERVE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderUnlock() {
  SHARDSERVE_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  SHARDSERVE_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::LockWhen(const Condition& cond) {
  SHARDSERVE_REAL(void (*)(Mutex*, const Condition&),
                  "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  real(this, cond);
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  SHARDSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
                  "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Guarded g{this, &cond};
  const bool met = real(this, Condition(&EvalAcquired, &g), timeout);
  __tsan_acquire(this);  // held on return either way
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  SHARDSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Time),
                  "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Guarded g{this, &cond};
  const bool met = real(this, Condition(&EvalAcquired, &g), deadline);
  __tsan_acquire(this);
  return met;
}

void Mutex::Await(const Condition& cond) {
  SHARDSERVE_REAL(void (*)(Mutex*, const Condition&),
                  "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  __tsan_release(this);
  Guarded g{this, &cond};
  real(this, Condition(&EvalAcquired, &g));
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  SHARDSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
                  "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  __tsan_release(this);
  Guarded g{this, &cond};
  const bool met = real(this, Condition(&EvalAcquired, &g), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  SHARDSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Time),
                  "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_release(this);
  Guarded g{this, &cond};
  const bool met = real(this, Condition(&EvalAcquired, &g), deadline);
  __tsan_acquire(this);
  return met;
}

}  // namespace debian3
}  // namespace absl
