#include "model/grammar/json_schema.h"

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "model/grammar/grammar.h"
#include "nlohmann/json.hpp"

namespace shardserve::grammar {
namespace {

using json = nlohmann::ordered_json;

// The shared pieces every JSON grammar uses.
constexpr char kPrimitives[] = R"gbnf(
ws ::= " "?
json-value ::= json-object | json-array | json-string | json-number | "true" | "false" | "null"
json-object ::= "{" ( json-member ( "," ws json-member )* )? "}"
json-member ::= json-string ":" ws json-value
json-array ::= "[" ( json-value ( "," ws json-value )* )? "]"
json-string ::= "\"" json-char* "\""
json-char ::= [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" json-u4 )
json-u4 ::= ( [0-9a-cA-CeEfF] hex hex hex ) | ( [dD] [0-7] hex hex )
hex ::= [0-9a-fA-F]
json-number ::= json-integer ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,2} )?
json-integer ::= "-"? ( "0" | [1-9] [0-9]{0,14} )
json-date ::= [0-9]{4} "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] ) | ( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" ) | "02-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) )
json-time ::= ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )
json-uuid ::= hex{8} "-" hex{4} "-" hex{4} "-" hex{4} "-" hex{12}
)gbnf";

constexpr int kMaxDepth = 64;
constexpr int kMaxItems = 1000;

const std::set<std::string>& Annotations() {
  static const auto* kSet =
      new std::set<std::string>{"title", "description", "default",    "examples", "$schema",
                                "$id",   "$comment",    "deprecated", "readOnly", "writeOnly"};
  return *kSet;
}
const std::set<std::string>& Supported() {
  static const auto* kSet =
      new std::set<std::string>{"type",        "properties", "required",  "additionalProperties",
                                "items",       "minItems",   "maxItems",  "enum",
                                "const",       "anyOf",      "$ref",      "$defs",
                                "definitions", "minLength",  "maxLength", "format"};
  return *kSet;
}

std::string PointerPart(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

class Compiler {
 public:
  Compiler(const json& root, std::string name) : root_(root), name_(std::move(name)) {}

  // The rules, the top one named name_; without the primitives.
  absl::StatusOr<std::string> Run() {
    ASSIGN_OR_RETURN(std::string top, Visit(root_, "", "root", 0));
    std::string out = absl::StrCat(name_, " ::= ", top, "\n");
    for (const auto& [name, body] : rules_) absl::StrAppend(&out, name, " ::= ", body, "\n");
    return out;
  }

 private:
  static absl::Status Bad(const std::string& pointer, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(
        "schema at '", pointer.empty() ? "#" : absl::StrCat("#", pointer), "': ", what));
  }

  std::string NewRule(std::string_view hint) {
    std::string base;
    for (char c : hint) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
      base.push_back(ok ? c : '-');
    }
    if (base.size() > 40) base.resize(40);
    base = absl::StrCat(name_, "-", base);
    std::string name = base;
    for (int i = 2; used_.contains(name); ++i) name = absl::StrCat(base, "-", i);
    used_.insert(name);
    return name;
  }
  std::string Define(std::string_view hint, std::string body) {
    std::string name = NewRule(hint);
    rules_.emplace_back(name, std::move(body));
    return name;
  }

  static std::string Literal(const json& value) { return GbnfLiteral(value.dump()); }

  absl::StatusOr<std::string> Ref(const std::string& ref, const std::string& pointer, int depth) {
    if (auto it = refs_.find(ref); it != refs_.end()) return it->second;
    const json* target = nullptr;
    std::string target_pointer;
    if (ref == "#") {
      target = &root_;
    } else {
      for (const char* prefix : {"#/$defs/", "#/definitions/"}) {
        const std::string p = prefix;
        if (ref.rfind(p, 0) != 0) continue;
        const std::string name = ref.substr(p.size());
        const std::string section = p.substr(2, p.size() - 3);
        auto defs = root_.find(section);
        if (defs != root_.end() && defs->is_object() && defs->contains(name)) {
          target = &(*defs)[name];
          target_pointer = absl::StrCat("/", section, "/", PointerPart(name));
        }
      }
      if (target == nullptr) {
        return Bad(pointer, absl::StrCat("$ref '", ref,
                                         "' names no schema (only \"#\", \"#/$defs/NAME\" and "
                                         "\"#/definitions/NAME\" in this schema are supported)"));
      }
    }
    // Named before it is visited, so that recursive references end.
    const std::string name = NewRule(ref == "#" ? "root-ref" : ref.substr(ref.rfind('/') + 1));
    refs_[ref] = name;
    const size_t slot = rules_.size();
    rules_.emplace_back(name, "");
    ASSIGN_OR_RETURN(std::string body, Visit(*target, target_pointer, name, depth + 1));
    rules_[slot].second = body;
    return name;
  }

  absl::StatusOr<std::string> Visit(const json& schema, const std::string& pointer,
                                    const std::string& hint, int depth) {
    if (depth > kMaxDepth) return Bad(pointer, absl::StrCat("nested deeper than ", kMaxDepth));
    if (schema.is_boolean()) {
      if (schema.get<bool>()) return std::string("json-value");
      return Bad(pointer, "the schema false allows no value");
    }
    if (!schema.is_object()) return Bad(pointer, "a schema must be an object or a boolean");
    for (const auto& [key, unused] : schema.items()) {
      if (Annotations().contains(key) || Supported().contains(key)) continue;
      return Bad(absl::StrCat(pointer, "/", PointerPart(key)),
                 absl::StrCat("keyword '", key, "' is not supported"));
    }
    if (auto it = schema.find("$ref"); it != schema.end()) {
      if (!it->is_string()) return Bad(pointer + "/$ref", "must be a string");
      for (const auto& [key, unused] : schema.items()) {
        if (key != "$ref" && key != "$defs" && key != "definitions" &&
            !Annotations().contains(key)) {
          return Bad(absl::StrCat(pointer, "/", PointerPart(key)),
                     "keywords beside $ref are not supported");
        }
      }
      return Ref(it->get<std::string>(), pointer, depth);
    }
    if (auto it = schema.find("const"); it != schema.end()) return Literal(*it);
    if (auto it = schema.find("enum"); it != schema.end()) {
      if (!it->is_array() || it->empty())
        return Bad(pointer + "/enum", "must be a non-empty array");
      std::vector<std::string> alts;
      for (const json& v : *it) alts.push_back(Literal(v));
      return Define(hint, absl::StrJoin(alts, " | "));
    }
    if (auto it = schema.find("anyOf"); it != schema.end()) {
      if (!it->is_array() || it->empty()) {
        return Bad(pointer + "/anyOf", "must be a non-empty array");
      }
      std::vector<std::string> alts;
      for (size_t i = 0; i < it->size(); ++i) {
        ASSIGN_OR_RETURN(std::string alt, Visit((*it)[i], absl::StrCat(pointer, "/anyOf/", i),
                                                absl::StrCat(hint, "-", i), depth + 1));
        alts.push_back(std::move(alt));
      }
      return Define(hint, absl::StrJoin(alts, " | "));
    }
    std::vector<std::string> types;
    if (auto it = schema.find("type"); it != schema.end()) {
      if (it->is_string()) {
        types.push_back(it->get<std::string>());
      } else if (it->is_array() && !it->empty()) {
        for (const json& t : *it) {
          if (!t.is_string()) return Bad(pointer + "/type", "must be a string or strings");
          types.push_back(t.get<std::string>());
        }
      } else {
        return Bad(pointer + "/type", "must be a type name or a non-empty list of them");
      }
    } else if (schema.contains("properties") || schema.contains("additionalProperties")) {
      types.push_back("object");
    } else if (schema.contains("items")) {
      types.push_back("array");
    } else {
      return std::string("json-value");
    }
    std::vector<std::string> alts;
    for (const std::string& type : types) {
      ASSIGN_OR_RETURN(std::string alt, Typed(schema, type, pointer, hint, depth));
      alts.push_back(std::move(alt));
    }
    if (alts.size() == 1) return alts[0];
    return Define(hint, absl::StrJoin(alts, " | "));
  }

  absl::StatusOr<int64_t> Count(const json& schema, const char* key, const std::string& pointer,
                                int64_t fallback) {
    auto it = schema.find(key);
    if (it == schema.end()) return fallback;
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return Bad(absl::StrCat(pointer, "/", key), "must be a non-negative integer");
    }
    if (it->get<int64_t>() > kMaxItems) {
      return Bad(absl::StrCat(pointer, "/", key),
                 absl::StrCat("over ", kMaxItems, " is not supported"));
    }
    return it->get<int64_t>();
  }

  absl::StatusOr<std::string> Typed(const json& schema, const std::string& type,
                                    const std::string& pointer, const std::string& hint,
                                    int depth) {
    if (type == "null") return std::string("\"null\"");
    if (type == "boolean") return std::string("( \"true\" | \"false\" )");
    if (type == "integer") return std::string("json-integer");
    if (type == "number") return std::string("json-number");
    if (type == "string") {
      if (auto it = schema.find("format"); it != schema.end()) {
        const std::string format = it->is_string() ? it->get<std::string>() : "";
        if (format == "date") return std::string("\"\\\"\" json-date \"\\\"\"");
        if (format == "time") return std::string("\"\\\"\" json-time \"\\\"\"");
        if (format == "date-time")
          return std::string("\"\\\"\" json-date \"T\" json-time \"\\\"\"");
        if (format == "uuid") return std::string("\"\\\"\" json-uuid \"\\\"\"");
        return Bad(pointer + "/format",
                   absl::StrCat("format '", it->dump(),
                                "' is not supported (supported: date, time, date-time, uuid)"));
      }
      ASSIGN_OR_RETURN(int64_t lo, Count(schema, "minLength", pointer, 0));
      ASSIGN_OR_RETURN(int64_t hi, Count(schema, "maxLength", pointer, -1));
      if (lo == 0 && hi < 0) return std::string("json-string");
      if (hi >= 0 && hi < lo) return Bad(pointer + "/maxLength", "is less than minLength");
      return Define(hint, absl::StrCat("\"\\\"\" json-char{", lo, ",",
                                       hi < 0 ? "" : absl::StrCat(hi), "} \"\\\"\""));
    }
    if (type == "array") {
      std::string item = "json-value";
      if (auto it = schema.find("items"); it != schema.end()) {
        ASSIGN_OR_RETURN(item, Visit(*it, pointer + "/items", hint + "-item", depth + 1));
      }
      ASSIGN_OR_RETURN(int64_t lo, Count(schema, "minItems", pointer, 0));
      ASSIGN_OR_RETURN(int64_t hi, Count(schema, "maxItems", pointer, -1));
      if (hi >= 0 && hi < lo) return Bad(pointer + "/maxItems", "is less than minItems");
      if (hi == 0) return std::string("\"[\" \"]\"");
      const std::string more = absl::StrCat("\",\" ws ", item);
      const std::string rest =
          hi < 0 ? absl::StrCat("( ", more, " )*")
                 : absl::StrCat("( ", more, " ){", lo == 0 ? 0 : lo - 1, ",", hi - 1, "}");
      if (lo == 0) return Define(hint, absl::StrCat("\"[\" ( ", item, " ", rest, " )? \"]\""));
      if (hi < 0) {
        return Define(hint, absl::StrCat("\"[\" ", item, " ( ", more, " ){", lo - 1, ",} \"]\""));
      }
      return Define(hint, absl::StrCat("\"[\" ", item, " ", rest, " \"]\""));
    }
    if (type == "object") return Object(schema, pointer, hint, depth);
    return Bad(pointer + "/type", absl::StrCat("unknown type '", type, "'"));
  }

  absl::StatusOr<std::string> Object(const json& schema, const std::string& pointer,
                                     const std::string& hint, int depth) {
    std::vector<std::pair<std::string, std::string>> props;  // (key literal, value expr)
    std::set<std::string> names;
    if (auto it = schema.find("properties"); it != schema.end()) {
      if (!it->is_object()) return Bad(pointer + "/properties", "must be an object");
      for (const auto& [key, sub] : it->items()) {
        const std::string sub_pointer = absl::StrCat(pointer, "/properties/", PointerPart(key));
        ASSIGN_OR_RETURN(std::string value,
                         Visit(sub, sub_pointer, absl::StrCat(hint, "-", key), depth + 1));
        props.emplace_back(key, std::move(value));
        names.insert(key);
      }
    }
    std::set<std::string> required;
    if (auto it = schema.find("required"); it != schema.end()) {
      if (!it->is_array()) return Bad(pointer + "/required", "must be an array of names");
      for (const json& r : *it) {
        if (!r.is_string()) return Bad(pointer + "/required", "must be an array of names");
        if (!names.contains(r.get<std::string>())) {
          return Bad(pointer + "/required",
                     absl::StrCat("'", r.get<std::string>(), "' is not among the properties"));
        }
        required.insert(r.get<std::string>());
      }
    }
    auto extra = schema.find("additionalProperties");
    if (props.empty()) {
      if (extra == schema.end() || (extra->is_boolean() && extra->get<bool>())) {
        return std::string("json-object");
      }
      if (extra->is_boolean()) return std::string("\"{\" \"}\"");
      ASSIGN_OR_RETURN(std::string value, Visit(*extra, pointer + "/additionalProperties",
                                                hint + "-value", depth + 1));
      const std::string member = absl::StrCat("json-string \":\" ws ", value);
      return Define(hint, absl::StrCat("\"{\" ( ", member, " ( \",\" ws ", member, " )* )? \"}\""));
    }
    if (extra != schema.end() && !extra->is_boolean()) {
      return Bad(pointer + "/additionalProperties",
                 "a schema here is supported only for objects without properties");
    }
    // after[i]: the properties from i on when one came before (each needs a leading comma);
    // first[i]: the same when none came before. Built from the end.
    const size_t n = props.size();
    std::vector<std::string> after(n + 1), first(n + 1);
    after[n] = first[n] = "";
    for (size_t i = n; i-- > 0;) {
      const std::string kv =
          absl::StrCat(Literal(json(props[i].first)), " \":\" ws ", props[i].second);
      const bool req = required.contains(props[i].first);
      std::string a = absl::StrCat("\",\" ws ", kv, " ", after[i + 1]);
      std::string f = absl::StrCat(kv, " ", after[i + 1]);
      if (!req) {
        a = absl::StrCat("( ", a, " ) | ( ", after[i + 1].empty() ? "\"\"" : after[i + 1], " )");
        f = absl::StrCat("( ", f, " ) | ( ", first[i + 1].empty() ? "\"\"" : first[i + 1], " )");
      }
      after[i] = Define(absl::StrCat(hint, "-a", i), a);
      first[i] = Define(absl::StrCat(hint, "-f", i), f);
    }
    return Define(hint, absl::StrCat("\"{\" ", first[0], " \"}\""));
  }

  const json& root_;
  const std::string name_;
  std::vector<std::pair<std::string, std::string>> rules_;
  std::set<std::string> used_;
  std::map<std::string, std::string> refs_;
};

}  // namespace

std::string JsonObjectGbnf() { return absl::StrCat("root ::= json-object\n", kPrimitives); }

std::string JsonPrimitivesGbnf() { return kPrimitives; }

absl::StatusOr<std::string> JsonSchemaRules(std::string_view schema_json, const std::string& name) {
  json schema = json::parse(schema_json, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return absl::InvalidArgumentError("the schema is not valid JSON");
  Compiler compiler(schema, name);
  return compiler.Run();
}

absl::StatusOr<std::string> JsonSchemaToGbnf(std::string_view schema_json) {
  ASSIGN_OR_RETURN(std::string rules, JsonSchemaRules(schema_json, "root"));
  return absl::StrCat(rules, kPrimitives);
}

}  // namespace shardserve::grammar
