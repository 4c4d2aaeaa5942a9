// Fuzzes what a request may send the structured-output engine: the first byte picks a GBNF
// grammar or a JSON Schema, the rest is its text. Anything must be refused with
// INVALID_ARGUMENT or compile; a compiled grammar is then run for a few tokens over a byte
// vocabulary, where every token the mask allows must be accepted, and the masks a token table
// gives must equal those of whole-vocabulary walks.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "model/grammar/grammar.h"
#include "model/grammar/json_schema.h"
#include "model/grammar/matcher.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardserve::fuzz::Check;
  namespace g = shardserve::grammar;
  if (size == 0 || size > (64 << 10)) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string gbnf = text;
  if (data[0] & 1) {
    auto converted = g::JsonSchemaToGbnf(text);
    if (!converted.ok()) {
      Check(converted.status().code() == absl::StatusCode::kInvalidArgument, "schema errors");
      return 0;
    }
    gbnf = *converted;
  }
  auto grammar = g::Grammar::Parse(gbnf);
  if (!grammar.ok()) {
    Check(grammar.status().code() == absl::StatusCode::kInvalidArgument, "grammar errors");
    Check(!(data[0] & 1), "a converted schema parses");
    return 0;
  }
  static const auto* vocab = [] {
    std::vector<std::string> bytes;
    for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
    bytes.push_back("");
    for (const char* t : {"{\"", "\":", "ab", "\xc3\xa9", "true", "12"}) bytes.push_back(t);
    return new std::shared_ptr<const g::Vocabulary>(
        std::make_shared<const g::Vocabulary>(bytes, std::vector<int32_t>{256}));
  }();
  g::Matcher m(*grammar, *vocab);
  g::Matcher t(std::make_shared<g::TokenTable>(*grammar, *vocab));
  for (int step = 0; step < 8 && !m.Finished(); ++step) {
    auto mask = m.Mask(16 - step);
    if (!mask.ok()) return 0;  // too ambiguous: refused, not a crash
    auto from_table = t.Mask(16 - step);
    Check(!from_table.ok() || *from_table == *mask, "a token table's mask equals the walk's");
    if (!from_table.ok()) return 0;
    int32_t pick = -1;
    for (int32_t id = 0; id < (*vocab)->size(); ++id) {
      if (((*mask)[id >> 3] >> (id & 7)) & 1) {
        pick = id;
        if ((data[step % size] & 3) == 0) break;  // vary which allowed token is taken
      }
    }
    if (pick < 0) return 0;
    const absl::Status taken = m.Accept(pick);
    Check(taken.ok() || taken.code() == absl::StatusCode::kResourceExhausted,
          "a token the mask allows is accepted");
    if (!taken.ok() || !t.Accept(pick).ok()) return 0;
  }
  return 0;
}
