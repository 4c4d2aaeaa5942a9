// Fuzzes the safetensors reader: any file must be rejected cleanly or yield tensors that lie
// inside the file and whose byte counts match their shapes.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"

namespace {

// One scratch file per process: Open() takes a path (it maps the file).
const std::string& ScratchPath() {
  static const std::string path = [] {
    char tmpl[] = "/tmp/safetensors_fuzz_XXXXXX";
    const int fd = mkstemp(tmpl);
    shardserve::fuzz::Check(fd >= 0, "mkstemp");
    close(fd);
    std::atexit([] { std::remove(ScratchPath().c_str()); });
    return std::string(tmpl);
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardserve::fuzz::Check;
  const std::string& path = ScratchPath();
  FILE* f = std::fopen(path.c_str(), "wb");
  Check(f != nullptr, "open scratch file");
  Check(size == 0 || std::fwrite(data, 1, size, f) == size, "write scratch file");
  std::fclose(f);

  auto file = shardserve::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  for (const std::string& name : (*file)->Names()) {
    Check((*file)->Has(name), "listed names are present");
    auto t = (*file)->Get(name);
    if (!t.ok()) continue;
    Check(t->nbytes <= size, "tensor no larger than the file");
    Check(t->numel() >= 0, "non-negative element count");
    if (t->nbytes > 0) {
      // Touch the first and last byte so ASan sees any out-of-range pointer.
      const auto* p = static_cast<const uint8_t*>(t->data);
      volatile uint8_t x = p[0];
      x = p[t->nbytes - 1];
      (void)x;
    }
  }
  (void)(*file)->Get("no.such.tensor");
  return 0;
}
