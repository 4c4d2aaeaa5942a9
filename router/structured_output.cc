#include "router/structured_output.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/grammar/grammar.h"
#include "model/grammar/json_schema.h"
#include "model/grammar/matcher.h"
#include "model/tokenizer/tokenizer.h"

namespace shardserve {

std::shared_ptr<const grammar::Vocabulary> StructuredOutput::Vocabulary() {
  absl::MutexLock lock(&mu_);
  if (vocab_ == nullptr) vocab_ = grammar::Vocabulary::FromTokenizer(*tokenizer_, vocab_size_);
  return vocab_;
}

absl::StatusOr<std::shared_ptr<grammar::TokenTable>> StructuredOutput::Compile(
    const std::string& gbnf) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = by_text_.find(gbnf); it != by_text_.end()) {
      lru_.splice(lru_.end(), lru_, it->second);
      return it->second->second;
    }
  }
  // Compiled outside the lock: other requests' lookups do not wait for it.
  ASSIGN_OR_RETURN(std::shared_ptr<const grammar::Grammar> g, grammar::Grammar::Parse(gbnf));
  auto table = std::make_shared<grammar::TokenTable>(std::move(g), Vocabulary());
  absl::MutexLock lock(&mu_);
  // Another request may have compiled the same text meanwhile: share its table.
  if (auto it = by_text_.find(gbnf); it != by_text_.end()) return it->second->second;
  lru_.emplace_back(gbnf, table);
  by_text_[gbnf] = std::prev(lru_.end());
  if (lru_.size() > kCachedGrammars) {
    by_text_.erase(lru_.front().first);
    lru_.pop_front();
  }
  return table;
}

absl::StatusOr<std::shared_ptr<grammar::Matcher>> StructuredOutput::NewMatcherForGbnf(
    const std::string& gbnf, const std::string& field) {
  auto table = Compile(gbnf);
  if (!table.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", table.status().message()));
  }
  return std::make_shared<grammar::Matcher>(*std::move(table));
}

absl::StatusOr<std::shared_ptr<grammar::Matcher>> StructuredOutput::NewMatcher(
    const v1::ResponseFormat& format) {
  switch (format.format_case()) {
    case v1::ResponseFormat::kJsonObject:
      return NewMatcherForGbnf(grammar::JsonObjectGbnf(), "response_format.json_object");
    case v1::ResponseFormat::kJsonSchema: {
      const std::string& schema = format.json_schema().schema();
      if (schema.empty()) {
        return absl::InvalidArgumentError("response_format.json_schema.schema: empty");
      }
      if (schema.size() > kMaxSpecBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("response_format.json_schema.schema: ", schema.size(),
                         " bytes, more than ", kMaxSpecBytes));
      }
      auto gbnf = grammar::JsonSchemaToGbnf(schema);
      if (!gbnf.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("response_format.json_schema.schema: ", gbnf.status().message()));
      }
      return NewMatcherForGbnf(*gbnf, "response_format.json_schema.schema");
    }
    case v1::ResponseFormat::kGrammar:
      if (format.grammar().size() > kMaxSpecBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("response_format.grammar: ", format.grammar().size(), " bytes, more than ",
                         kMaxSpecBytes));
      }
      return NewMatcherForGbnf(format.grammar(), "response_format.grammar");
    default:
      return absl::InvalidArgumentError(
          "response_format: set one of json_object, json_schema or grammar");
  }
}

}  // namespace shardserve
