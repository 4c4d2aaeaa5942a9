// A read-only memory mapping of a whole file (RAII).
//
// Weights are memory-mapped so that a stage touches only the pages of its own tensors. The
// mapping lives as long as the MappedFile; views into it must not outlive it.
#ifndef SHARDSERVE_COMMON_MAPPED_FILE_H_
#define SHARDSERVE_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace shardserve {

class MappedFile {
 public:
  // NOT_FOUND for a missing file, INVALID_ARGUMENT for a directory, INTERNAL for mmap failures.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// Reads a whole (small) file into a string; NOT_FOUND names the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_MAPPED_FILE_H_
