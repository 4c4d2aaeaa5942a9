// Structured outputs on the router: GenerateRequest.response_format (and, for chat tools, a
// grammar the router writes) compiled into a grammar::Matcher that follows the sequence.
//
// Where the matcher runs: here, on the router, next to the token log. The router learns each
// sampled token first, advances the matcher by it and puts the mask for the next token into the
// sequence's next SequencePlan (allowed_tokens, (vocab + 7) / 8 bytes), which the last stage
// applies before sampling. So a mask is ready before its step is sent, nothing waits on the last
// stage, and failover or preemption need nothing new: the matcher and the mask stay with the
// sequence (its token log), and a re-prefill samples under the same mask. docs/API.md says why.
//
// Thread-safe.
#ifndef SHARDSERVE_ROUTER_STRUCTURED_OUTPUT_H_
#define SHARDSERVE_ROUTER_STRUCTURED_OUTPUT_H_

#include <list>
#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

class Tokenizer;
namespace grammar {
class Grammar;
class Matcher;
class TokenTable;
class Vocabulary;
}  // namespace grammar

class StructuredOutput {
 public:
  // Compiled grammars kept for reuse, by their GBNF text, each with the token table its
  // matchers fill and share.
  static constexpr size_t kCachedGrammars = 64;
  // Largest grammar or schema text a request may carry.
  static constexpr size_t kMaxSpecBytes = 256 << 10;

  // `vocab_size`: the model's (its logits'), which masks cover.
  StructuredOutput(const Tokenizer* tokenizer, int32_t vocab_size)
      : tokenizer_(tokenizer), vocab_size_(vocab_size) {}

  // A matcher for `format`. INVALID_ARGUMENT naming the field (and, for a schema or grammar,
  // the spot in it) when it is malformed or uses what the engine does not support.
  absl::StatusOr<std::shared_ptr<grammar::Matcher>> NewMatcher(const v1::ResponseFormat& format);
  // A matcher for GBNF text the router wrote itself (tool calls); `field` names it in errors.
  absl::StatusOr<std::shared_ptr<grammar::Matcher>> NewMatcherForGbnf(const std::string& gbnf,
                                                                      const std::string& field);

 private:
  absl::StatusOr<std::shared_ptr<grammar::TokenTable>> Compile(const std::string& gbnf);
  std::shared_ptr<const grammar::Vocabulary> Vocabulary();

  const Tokenizer* const tokenizer_;
  const int32_t vocab_size_;
  absl::Mutex mu_;
  std::shared_ptr<const grammar::Vocabulary> vocab_ ABSL_GUARDED_BY(mu_);
  // Least recently used first.
  std::list<std::pair<std::string, std::shared_ptr<grammar::TokenTable>>> lru_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, decltype(lru_)::iterator> by_text_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_STRUCTURED_OUTPUT_H_
