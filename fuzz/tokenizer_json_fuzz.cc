// Fuzzes tokenizer.json loading; every tokenizer that loads is then exercised on a fixed text
// and on the input itself.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/tokenizer/tokenizer_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto tok = shardserve::tokenizer_internal::ParseHfTokenizer(json, "", "", "fuzz.json");
  if (!tok.ok()) return 0;
  shardserve::fuzz::ExerciseTokenizer(
      **tok, "Hello, world! 123 <s> caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD\n");
  shardserve::fuzz::ExerciseTokenizer(**tok, json.substr(0, 256));
  return 0;
}
