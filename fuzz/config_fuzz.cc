// Fuzzes config.json parsing: any text must be rejected cleanly or yield a config whose own
// ToJson() reads back to the same config.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardserve::ModelConfig;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = ModelConfig::FromJson(text, "fuzz/config.json");
  if (!config.ok()) return 0;
  const std::string again = config->ToJson();
  auto reread = ModelConfig::FromJson(again, "fuzz/config.json (re-read)");
  shardserve::fuzz::Check(reread.ok(), "ToJson output is accepted by FromJson");
  shardserve::fuzz::Check(reread->ToJson() == again, "ToJson is a fixed point");
  (void)config->RopeInvFreq();
  return 0;
}
