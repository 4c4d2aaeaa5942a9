// Fuzzes the GGUF reader: any input must be rejected cleanly or yield a consistent directory.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "model/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = shardserve::GgufFile::Parse(data, size, "fuzz.gguf");
  if (!f.ok()) return 0;
  for (const auto& t : (*f)->tensors()) {
    shardserve::fuzz::Check(t.data >= data && t.data + t.size_bytes <= data + size,
                            "tensor inside the file");
    // Touch the first and last byte so ASan sees any out-of-range pointer.
    if (t.size_bytes > 0) {
      volatile uint8_t x = t.data[0];
      x = t.data[t.size_bytes - 1];
      (void)x;
    }
  }
  for (const auto& [key, value] : (*f)->metadata()) {
    (void)(*f)->GetString(key);
    (void)(*f)->GetInt(key);
    (void)(*f)->GetStringArray(key);
    (void)(*f)->GetFloatArray(key);
  }
  return 0;
}
