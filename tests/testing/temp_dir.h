// Test helpers: a temporary directory removed at scope exit, and running a command.
#ifndef SHARDSERVE_TESTS_TESTING_TEMP_DIR_H_
#define SHARDSERVE_TESTS_TESTING_TEMP_DIR_H_

#include <unistd.h>

#include <sys/wait.h>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace shardserve::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "shardserve-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `cmd` through the shell, capturing stdout and stderr separately.
inline CommandResult RunCommand(const std::string& cmd) {
  TempDir dir;
  const std::string full = cmd + " >" + (dir / "out") + " 2>" + (dir / "err");
  const int status = std::system(full.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadAll(dir / "out");
  r.err = ReadAll(dir / "err");
  return r;
}

inline std::string BinaryPath(const std::string& name) {
  return std::string(SHARDSERVE_BINARY_DIR) + "/bin/" + name;
}

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_TESTING_TEMP_DIR_H_
