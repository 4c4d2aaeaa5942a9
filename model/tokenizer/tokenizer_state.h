// Internal representation shared by the tokenizer loaders and the Tokenizer itself.
#ifndef SHARDSERVE_MODEL_TOKENIZER_TOKENIZER_STATE_H_
#define SHARDSERVE_MODEL_TOKENIZER_TOKENIZER_STATE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "model/tokenizer/bpe_model.h"
#include "model/tokenizer/pre_tokenizer.h"

namespace shardserve {
class Tokenizer;
}

namespace shardserve::tokenizer_internal {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;  // absorbs whitespace before it
  bool rstrip = false;  // absorbs whitespace after it
};

struct TokenizerState {
  std::unique_ptr<BpeModel> model;
  Normalizer normalizer{{}};
  PreTokenizer pre_tokenizer{{}};

  // Indexed by id, size vocab_size.
  std::vector<std::string> pieces;   // raw vocabulary piece / added token content
  std::vector<std::string> decoded;  // bytes the token contributes to decoded text
  std::vector<uint8_t> special;

  std::vector<AddedToken> added;  // matched in the input before anything else
  // For each first byte, indices into `added`, longest content first.
  std::array<std::vector<int32_t>, 256> added_by_first_byte;
  absl::flat_hash_map<std::string, int32_t> added_to_id;

  std::vector<int32_t> prefix_ids;  // added around a sequence when Encode(add_bos=true)
  std::vector<int32_t> suffix_ids;
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
  std::string bos_token, eos_token, chat_template;
  bool strip_leading_space = false;  // the decoder drops one leading space of the output

  // Fills added_by_first_byte / added_to_id / special from `added`, sizes the per-id tables,
  // collects end-of-generation ids by well-known names. Call once all fields are set.
  absl::Status Finish();
};

// Loaders (tokenizer.json folder / GGUF file).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir,
                                                           const std::string& json_path);
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::string& path);
// Parses tokenizer.json text (and optional config texts) directly; used by the folder loader and
// the fuzz target. `name` appears in error messages.
// A SentencePiece byte-fallback piece "<0xAB>" -> 0xAB; -1 for any other piece.
int ByteFallbackValue(absl::string_view piece);

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(absl::string_view tokenizer_json,
                                                            absl::string_view config_json,
                                                            absl::string_view generation_json,
                                                            const std::string& name);

}  // namespace shardserve::tokenizer_internal

#endif  // SHARDSERVE_MODEL_TOKENIZER_TOKENIZER_STATE_H_
