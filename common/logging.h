// Minimal leveled logging to stderr, and CHECK for programmer errors.
//
// Debian's Abseil predates absl/log. LOG(INFO) << ...; lines carry a level letter, time and
// source location. Thread-safe: each line is written with one call.
#ifndef SHARDSERVE_COMMON_LOGGING_H_
#define SHARDSERVE_COMMON_LOGGING_H_

#include <sstream>

namespace shardserve {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Lines below this level are dropped. Default kInfo; SHARDSERVE_LOG_LEVEL=debug|info|warning|error.
LogLevel MinLogLevel();
void SetMinLogLevel(LogLevel level);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();  // Writes the line; aborts for kFatal.
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Swallows a stream expression when the level is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace shardserve

#define SHARDSERVE_LOG_LEVEL_DEBUG ::shardserve::LogLevel::kDebug
#define SHARDSERVE_LOG_LEVEL_INFO ::shardserve::LogLevel::kInfo
#define SHARDSERVE_LOG_LEVEL_WARNING ::shardserve::LogLevel::kWarning
#define SHARDSERVE_LOG_LEVEL_ERROR ::shardserve::LogLevel::kError
#define SHARDSERVE_LOG_LEVEL_FATAL ::shardserve::LogLevel::kFatal

#define LOG(severity)                                             \
  (SHARDSERVE_LOG_LEVEL_##severity < ::shardserve::MinLogLevel()) \
      ? (void)0                                                   \
      : ::shardserve::LogVoidify() &                              \
            ::shardserve::LogMessage(SHARDSERVE_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()

#define CHECK(cond)                                                                               \
  (cond)                                                                                          \
      ? (void)0                                                                                   \
      : ::shardserve::LogVoidify() &                                                              \
            ::shardserve::LogMessage(::shardserve::LogLevel::kFatal, __FILE__, __LINE__).stream() \
                << "Check failed: " #cond " "

#endif  // SHARDSERVE_COMMON_LOGGING_H_
