// Fuzzes Encode / Decode / StreamingDecoder on arbitrary bytes with a SentencePiece-style vocab
// (stories260K: byte fallback, added tokens) and a byte-level BPE vocab with the Llama-3 split
// regex (PCRE2). Run from the repository root so ../shared resolves.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/tokenizer/bpe_model.h"
#include "model/tokenizer/tokenizer_state.h"
#include "nlohmann/json.hpp"

namespace {

// A small byte-level tokenizer: 256 byte pieces, a few merges, two special tokens.
std::string ByteLevelJson() {
  using shardserve::tokenizer_internal::BytesToByteLevel;
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[BytesToByteLevel(std::string(1, static_cast<char>(b)))] = b;
  const char* merges[][2] = {{" ", "t"},  {"h", "e"},  {" t", "he"}, {"i", "n"},
                             {" ", "a"},  {"e", "r"},  {"o", "n"},   {"a", "n"},
                             {" a", "n"}, {"an", "d"}, {"1", "2"}};
  nlohmann::json jm = nlohmann::json::array();
  int next = 256;
  for (const auto& m : merges) {
    const std::string a = BytesToByteLevel(m[0]), b = BytesToByteLevel(m[1]);
    jm.push_back(a + " " + b);
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
  }
  nlohmann::json j;
  j["added_tokens"] = {{{"id", next}, {"content", "<|bos|>"}, {"special", true}},
                       {{"id", next + 1},
                        {"content", "<|user|>"},
                        {"special", false},
                        {"lstrip", true},
                        {"rstrip", true}}};
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern",
          {{"Regex",
            R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
         {"behavior", "Isolated"}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<|bos|>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
      {"special_tokens", {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {next}}}}}}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", jm}, {"ignore_merges", true}};
  return j.dump();
}

const shardserve::Tokenizer& Spm() {
  static const shardserve::Tokenizer* tok = [] {
    auto t = shardserve::Tokenizer::Load("../shared/models/stories260K");
    if (!t.ok()) {
      std::fprintf(stderr, "cannot load stories260K tokenizer (run from the repo root): %s\n",
                   std::string(t.status().message()).c_str());
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

const shardserve::Tokenizer& ByteLevel() {
  static const shardserve::Tokenizer* tok = [] {
    auto t = shardserve::tokenizer_internal::ParseHfTokenizer(ByteLevelJson(), "", "", "bl");
    if (!t.ok()) {
      std::fprintf(stderr, "byte-level tokenizer: %s\n", std::string(t.status().message()).c_str());
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  shardserve::fuzz::ExerciseTokenizer(Spm(), text);
  shardserve::fuzz::ExerciseTokenizer(ByteLevel(), text);
  // Lossless for the byte-level vocabulary on ASCII text (which NFC leaves alone).
  bool ascii = true;
  for (unsigned char c : text) ascii &= c < 0x80;
  // "<|user|>" strips the whitespace around it, so texts containing it do not round-trip.
  if (ascii && text.find("<|user|>") == std::string::npos) {
    const auto& tok = ByteLevel();
    shardserve::fuzz::Check(tok.Decode(tok.Encode(text, false), false) == text,
                            "byte-level round trip");
  }
  return 0;
}
