// JSON output as grammars: any JSON object (OpenAI's response_format json_object) and the
// outputs a JSON Schema allows (json_schema), written as GBNF for grammar/grammar.h.
//
// Outputs are compact: no whitespace except one optional space after ',' and ':'. Numbers keep
// to what every JSON parser reads back exactly as a finite double: up to 15 integer digits, 15
// fraction digits and a 2-digit exponent. Object properties come in the schema's order.
//
// Supported keywords: type (a name or a list), properties, required, additionalProperties
// (false, true, or a schema for an object without properties), items, minItems, maxItems,
// enum, const, anyOf, $ref to "#", "#/$defs/..." or "#/definitions/...", $defs, definitions,
// minLength, maxLength, format (date, time, date-time, uuid), and the annotations (title,
// description, default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly).
// Anything else is refused with INVALID_ARGUMENT naming its JSON pointer, never ignored.
#ifndef SHARDSERVE_MODEL_GRAMMAR_JSON_SCHEMA_H_
#define SHARDSERVE_MODEL_GRAMMAR_JSON_SCHEMA_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace shardserve::grammar {

// GBNF for any JSON object.
std::string JsonObjectGbnf();

// GBNF for the JSON values `schema_json` allows. INVALID_ARGUMENT naming the spot (a JSON
// pointer into the schema) for malformed or unsupported schemas.
absl::StatusOr<std::string> JsonSchemaToGbnf(std::string_view schema_json);

// The same as rules to combine with others: the top rule is `name`, the rest are prefixed
// with "name-", and they refer to the shared rules of JsonPrimitivesGbnf() (json-value,
// json-object, json-string, ..., ws), which the whole grammar must include once.
absl::StatusOr<std::string> JsonSchemaRules(std::string_view schema_json, const std::string& name);
std::string JsonPrimitivesGbnf();

}  // namespace shardserve::grammar

#endif  // SHARDSERVE_MODEL_GRAMMAR_JSON_SCHEMA_H_
