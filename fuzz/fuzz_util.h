// Shared pieces of the libFuzzer targets.
#ifndef SHARDSERVE_FUZZ_FUZZ_UTIL_H_
#define SHARDSERVE_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/utf8.h"

namespace shardserve::fuzz {

inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// Encode/decode invariants that hold for every tokenizer and input.
inline void ExerciseTokenizer(const Tokenizer& tok, const std::string& text) {
  const std::vector<int32_t> ids = tok.Encode(text, true);
  for (int32_t id : ids) Check(id >= 0 && id < tok.vocab_size(), "id in range");
  for (bool skip : {true, false}) {
    const std::string decoded = tok.Decode(ids, skip);
    Check(utf8::IsValid(decoded), "decode yields valid UTF-8");
    StreamingDecoder stream(tok, skip);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Add(id);
    streamed += stream.Flush();
    Check(streamed == decoded, "streaming decode equals full decode");
  }
  // Arbitrary ids (including out-of-range ones) must be safe to decode.
  std::vector<int32_t> junk;
  for (size_t i = 0; i + 4 <= text.size() && junk.size() < 64; i += 4) {
    int32_t v;
    std::memcpy(&v, text.data() + i, 4);
    junk.push_back(v);
  }
  Check(utf8::IsValid(tok.Decode(junk, false)), "decode of junk ids is valid UTF-8");
  for (int32_t id : junk) (void)tok.IdToPiece(id);
}

}  // namespace shardserve::fuzz

#endif  // SHARDSERVE_FUZZ_FUZZ_UTIL_H_
