#include "router/http_openai.h"

#include "router/finish_reason.h"

#include <algorithm>
#include <climits>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/wire.h"
#include "model/tokenizer/utf8.h"

namespace shardserve {
namespace {

using json = nlohmann::json;

absl::Status Invalid(const std::string& param, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

// Whether object `o` has `key` set to the string `want` (json::value would throw on another type).
bool FieldIs(const json& o, const char* key, const char* want) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() && it->get_ref<const std::string&>() == want;
}

// Reads an optional number field; INVALID_ARGUMENT when present with another type.
absl::StatusOr<std::optional<double>> Number(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) return Invalid(key, "must be a number");
  return std::optional<double>(it->get<double>());
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) return Invalid(key, "must be an integer");
  return std::optional<int64_t>(it->get<int64_t>());
}

absl::StatusOr<bool> Bool(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return false;
  if (!it->is_boolean()) return Invalid(key, "must be true or false");
  return it->get<bool>();
}

// Clamps into int32 range so that the shared validation reports the real problem.
int32_t ClampInt32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, INT32_MIN, INT32_MAX));
}

absl::Status ParsePrompt(const json& body, v1::GenerateRequest* out) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return Invalid("prompt", "is required");
  if (it->is_string()) {
    out->set_text(it->get<std::string>());
    return absl::OkStatus();
  }
  if (it->is_array()) {
    if (it->empty()) return Invalid("prompt", "is empty");
    if ((*it)[0].is_string()) {
      if (it->size() != 1) return Invalid("prompt", "only one prompt per request is supported");
      out->set_text((*it)[0].get<std::string>());
      return absl::OkStatus();
    }
    if ((*it)[0].is_array()) return Invalid("prompt", "only one prompt per request is supported");
    for (const json& id : *it) {
      if (!id.is_number_integer()) return Invalid("prompt", "must be a string or token ids");
      out->mutable_token_ids()->add_ids(ClampInt32(id.get<int64_t>()));
    }
    return absl::OkStatus();
  }
  return Invalid("prompt", "must be a string or token ids");
}

absl::Status ParseMessages(const json& body, v1::GenerateRequest* out) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array()) return Invalid("messages", "must be an array");
  if (it->empty()) return Invalid("messages", "is empty");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Invalid(where, "must be an object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return Invalid(where + ".role", "is required");
    v1::ChatMessage* msg = out->mutable_chat()->add_messages();
    msg->set_role(role->get<std::string>());
    if (auto id = m.find("tool_call_id"); id != m.end() && !id->is_null()) {
      if (!id->is_string()) return Invalid(where + ".tool_call_id", "must be a string");
      msg->set_tool_call_id(id->get<std::string>());
    }
    if (auto calls = m.find("tool_calls"); calls != m.end() && !calls->is_null()) {
      if (!calls->is_array()) return Invalid(where + ".tool_calls", "must be an array");
      for (size_t k = 0; k < calls->size(); ++k) {
        const json& c = (*calls)[k];
        const std::string at = absl::StrCat(where, ".tool_calls[", k, "]");
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object()) {
          return Invalid(at, "must be {\"type\": \"function\", \"function\": {name, arguments}}");
        }
        const json& f = c["function"];
        if (!f.contains("name") || !f["name"].is_string()) {
          return Invalid(at + ".function.name", "must be a string");
        }
        if (!f.contains("arguments") || !f["arguments"].is_string()) {
          return Invalid(at + ".function.arguments", "must be a string (JSON text)");
        }
        v1::ToolCall* call = msg->add_tool_calls();
        if (c.contains("id") && c["id"].is_string()) call->set_id(c["id"].get<std::string>());
        call->set_name(f["name"].get<std::string>());
        call->set_arguments(f["arguments"].get<std::string>());
      }
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) continue;
    if (content->is_string()) {
      msg->set_content(content->get<std::string>());
    } else if (content->is_array()) {
      // Content parts: only text parts can reach a text model.
      std::string text;
      for (const json& part : *content) {
        if (!part.is_object() || !FieldIs(part, "type", "text") || !part.contains("text") ||
            !part["text"].is_string()) {
          return Invalid(where + ".content", "only text parts are supported");
        }
        text += part["text"].get<std::string>();
      }
      msg->set_content(text);
    } else {
      return Invalid(where + ".content", "must be a string or an array of text parts");
    }
  }
  return absl::OkStatus();
}

// A call as OpenAI writes it in message.tool_calls (a streamed delta adds its index).
json ToolCallJson(const v1::ToolCall& c) {
  return {{"id", c.id()},
          {"type", "function"},
          {"function", {{"name", c.name()}, {"arguments", c.arguments()}}}};
}

json FinishJson(v1::FinishReason r) {
  const std::string name = FinishReasonName(r);
  return name.empty() ? json(nullptr) : json(name);
}

std::vector<int> Bytes(const std::string& s) {
  std::vector<int> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

// A token as OpenAI shows it: its text (" there", not the vocabulary piece "▁there"), or, when
// its bytes are not whole UTF-8 characters, "bytes:\xe2\x96" (the exact bytes are in `bytes`).
std::string TokenString(const std::string& bytes) {
  if (utf8::IsValid(bytes)) return bytes;
  std::string out = "bytes:";
  for (unsigned char c : bytes) absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
  return out;
}

// Characters `bytes` starts (its UTF-8 lead bytes), so that text offsets summed over a stream
// count every character once, at the token holding its first byte.
int64_t CharsStarted(const std::string& bytes) {
  return std::count_if(bytes.begin(), bytes.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

}  // namespace

namespace {

// Fields accepted only at the value that means "off" (n, best_of, echo).
absl::Status ParseUnsupported(const json& body) {
  auto n = Integer(body, "n");
  if (!n.ok()) return n.status();
  if (n->has_value() && **n != 1) {
    return Invalid("n", absl::StrCat(**n, " is not supported; only n=1 (one choice per request)"));
  }
  auto best_of = Integer(body, "best_of");
  if (!best_of.ok()) return best_of.status();
  if (best_of->has_value() && **best_of != 1) return Invalid("best_of", "only 1 is supported");
  auto echo = Bool(body, "echo");
  if (!echo.ok()) return echo.status();
  if (*echo) return Invalid("echo", "is not supported");
  // Accepted by OpenAI but not applied here: refused rather than silently dropped.
  if (auto it = body.find("logit_bias"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return Invalid("logit_bias", "must be an object");
    if (!it->empty()) return Invalid("logit_bias", "is not supported by this server");
  }
  return absl::OkStatus();
}

// response_format: text (free), json_object, json_schema ({name, schema, strict}) and, as an
// extension, grammar ({grammar: GBNF text}). The schema is taken from `body_text` again with
// its key order kept: properties come out in the order the schema lists them.
absl::Status ParseResponseFormat(const json& body, const std::string& body_text,
                                 v1::GenerateRequest* req) {
  auto it = body.find("response_format");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object() || !it->contains("type") || !(*it)["type"].is_string()) {
    return Invalid("response_format", "must be an object with a string `type`");
  }
  const std::string type = (*it)["type"].get<std::string>();
  if (type == "text") return absl::OkStatus();
  if (type == "json_object") {
    req->mutable_response_format()->mutable_json_object();
    return absl::OkStatus();
  }
  if (type == "grammar") {
    auto g = it->find("grammar");
    if (g == it->end() || !g->is_string()) {
      return Invalid("response_format.grammar", "must be a string (GBNF)");
    }
    req->mutable_response_format()->set_grammar(g->get<std::string>());
    return absl::OkStatus();
  }
  if (type != "json_schema") {
    return Invalid(
        "response_format",
        absl::StrCat("type '", type,
                     "' is not supported; use text, json_object, json_schema or grammar"));
  }
  auto spec = it->find("json_schema");
  if (spec == it->end() || !spec->is_object()) {
    return Invalid("response_format.json_schema", "must be an object with `name` and `schema`");
  }
  v1::JsonSchemaFormat* out = req->mutable_response_format()->mutable_json_schema();
  if (auto name = spec->find("name"); name != spec->end() && !name->is_null()) {
    if (!name->is_string()) return Invalid("response_format.json_schema.name", "must be a string");
    out->set_name(name->get<std::string>());
  }
  if (auto strict = spec->find("strict");
      strict != spec->end() && !strict->is_null() && !strict->is_boolean()) {
    return Invalid("response_format.json_schema.strict", "must be true or false");
  }
  auto schema = spec->find("schema");
  if (schema == spec->end() || schema->is_null()) {
    return Invalid("response_format.json_schema.schema", "is required");
  }
  if (!schema->is_object() && !schema->is_boolean()) {
    return Invalid("response_format.json_schema.schema", "must be a JSON Schema object");
  }
  const auto ordered = nlohmann::ordered_json::parse(body_text, nullptr, false);
  out->set_schema(ordered["response_format"]["json_schema"]["schema"].dump());
  return absl::OkStatus();
}

// tools ([{type: "function", function: {name, description, parameters, strict}}]) and
// tool_choice ("none", "auto", "required" or {type: "function", function: {name}}); chat only.
// The parameters schemas are taken from `body_text` again with their key order kept.
absl::Status ParseTools(const json& body, const std::string& body_text, OpenAiEndpoint endpoint,
                        v1::GenerateRequest* req) {
  auto tools = body.find("tools");
  auto choice = body.find("tool_choice");
  const bool has_tools = tools != body.end() && !tools->is_null();
  const bool has_choice = choice != body.end() && !choice->is_null();
  if (!has_tools && !has_choice) return absl::OkStatus();
  if (endpoint != OpenAiEndpoint::kChat) {
    return Invalid(has_tools ? "tools" : "tool_choice", "is only for chat completions");
  }
  v1::ChatPrompt* chat = req->mutable_chat();
  if (has_tools) {
    if (!tools->is_array()) return Invalid("tools", "must be an array");
    const auto ordered = nlohmann::ordered_json::parse(body_text, nullptr, false);
    for (size_t i = 0; i < tools->size(); ++i) {
      const json& t = (*tools)[i];
      const std::string at = absl::StrCat("tools[", i, "]");
      if (!t.is_object() || !FieldIs(t, "type", "function") || !t.contains("function") ||
          !t["function"].is_object()) {
        return Invalid(at, "must be {\"type\": \"function\", \"function\": {...}}");
      }
      const json& f = t["function"];
      if (!f.contains("name") || !f["name"].is_string()) {
        return Invalid(at + ".function.name", "must be a string");
      }
      v1::Tool* tool = chat->add_tools();
      tool->set_name(f["name"].get<std::string>());
      if (f.contains("description") && f["description"].is_string()) {
        tool->set_description(f["description"].get<std::string>());
      }
      if (f.contains("parameters") && !f["parameters"].is_null()) {
        if (!f["parameters"].is_object()) {
          return Invalid(at + ".function.parameters", "must be a JSON Schema object");
        }
        tool->set_parameters(ordered["tools"][i]["function"]["parameters"].dump());
      }
    }
  }
  if (has_choice) {
    v1::ToolChoice* c = chat->mutable_tool_choice();
    if (choice->is_string()) {
      const std::string mode = choice->get<std::string>();
      if (mode == "none") {
        c->set_mode(v1::TOOL_CHOICE_MODE_NONE);
      } else if (mode == "auto") {
        c->set_mode(v1::TOOL_CHOICE_MODE_AUTO);
      } else if (mode == "required") {
        c->set_mode(v1::TOOL_CHOICE_MODE_REQUIRED);
      } else {
        return Invalid("tool_choice", absl::StrCat("'", mode, "' is not none, auto or required"));
      }
    } else if (choice->is_object() && choice->contains("function") &&
               (*choice)["function"].is_object() && (*choice)["function"].contains("name") &&
               (*choice)["function"]["name"].is_string()) {
      c->set_function((*choice)["function"]["name"].get<std::string>());
    } else {
      return Invalid("tool_choice",
                     "must be none, auto, required or {\"type\": \"function\", \"function\": "
                     "{\"name\": ...}}");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseStreaming(const json& body, OpenAiRequest* req) {
  auto stream = Bool(body, "stream");
  if (!stream.ok()) return stream.status();
  req->stream = *stream;
  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return Invalid("stream_options", "must be an object");
    if (!req->stream) return Invalid("stream_options", "is only allowed with stream: true");
    auto usage = Bool(*it, "include_usage");
    if (!usage.ok()) return Invalid("stream_options.include_usage", "must be true or false");
    req->include_usage = *usage;
  }

  return absl::OkStatus();
}

absl::Status ParseMaxTokens(const json& body, OpenAiEndpoint endpoint, v1::GenerateRequest* req) {
  v1::GenerateRequest& g = *req;
  // max_completion_tokens is the chat API's newer name for max_tokens.
  auto max_tokens = Integer(body, "max_tokens");
  if (!max_tokens.ok()) return max_tokens.status();
  auto max_completion = Integer(body, "max_completion_tokens");
  if (!max_completion.ok()) return max_completion.status();
  std::optional<int64_t> limit = max_completion->has_value() ? *max_completion : *max_tokens;
  g.set_max_tokens(
      limit.has_value()
          ? ClampInt32(*limit)
          : (endpoint == OpenAiEndpoint::kChat ? kDefaultChatTokens : kDefaultCompletionTokens));
  if (limit.has_value() && *limit < 1) {
    return Invalid(max_completion->has_value() ? "max_completion_tokens" : "max_tokens",
                   absl::StrCat(*limit, " is less than 1"));
  }

  return absl::OkStatus();
}

absl::Status ParseStops(const json& body, v1::GenerateRequest* req) {
  v1::GenerateRequest& g = *req;
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      g.add_stop(it->get<std::string>());
    } else if (it->is_array()) {
      for (const json& s : *it) {
        if (!s.is_string()) return Invalid("stop", "must be a string or an array of strings");
        g.add_stop(s.get<std::string>());
      }
    } else {
      return Invalid("stop", "must be a string or an array of strings");
    }
  }

  return absl::OkStatus();
}

absl::Status ParseSampling(const json& body, v1::GenerateRequest* req) {
  v1::GenerateRequest& g = *req;
  v1::SamplingParameters* sp = g.mutable_sampling();
  for (const char* key : {"temperature", "top_p", "presence_penalty", "frequency_penalty",
                          "repetition_penalty", "min_p"}) {
    auto v = Number(body, key);
    if (!v.ok()) return v.status();
    if (!v->has_value()) continue;
    const float f = static_cast<float>(**v);
    const std::string k = key;
    if (k == "temperature") sp->set_temperature(f);
    if (k == "top_p") sp->set_top_p(f);
    if (k == "presence_penalty") sp->set_presence_penalty(f);
    if (k == "frequency_penalty") sp->set_frequency_penalty(f);
    if (k == "repetition_penalty") sp->set_repetition_penalty(f);
    if (k == "min_p") sp->set_min_p(f);
  }
  auto top_k = Integer(body, "top_k");
  if (!top_k.ok()) return top_k.status();
  if (top_k->has_value()) sp->set_top_k(ClampInt32(**top_k < 0 ? 0 : **top_k));
  auto seed = Integer(body, "seed");
  if (!seed.ok()) return seed.status();
  if (seed->has_value()) sp->set_seed(static_cast<uint64_t>(**seed));
  auto ignore_eos = Bool(body, "ignore_eos");
  if (!ignore_eos.ok()) return ignore_eos.status();
  g.set_ignore_eos(*ignore_eos);

  return absl::OkStatus();
}

absl::Status ParseLogprobs(const json& body, OpenAiEndpoint endpoint, v1::GenerateRequest* req) {
  v1::GenerateRequest& g = *req;
  // Completions: "logprobs": N alternatives (0..5). Chat: "logprobs": bool + "top_logprobs".
  if (endpoint == OpenAiEndpoint::kCompletions) {
    auto lp = Integer(body, "logprobs");
    if (!lp.ok()) return lp.status();
    if (lp->has_value()) {
      // Checked here, not by the shared validation, so that the error names this API's field.
      if (**lp < 0 || **lp > kMaxTopLogprobs) {
        return Invalid("logprobs", absl::StrCat(**lp, " is outside [0, ", kMaxTopLogprobs, "]"));
      }
      g.set_logprobs(true);
      g.set_top_logprobs(ClampInt32(**lp));
    }
  } else {
    auto lp = Bool(body, "logprobs");
    if (!lp.ok()) return lp.status();
    auto top = Integer(body, "top_logprobs");
    if (!top.ok()) return top.status();
    g.set_logprobs(*lp);
    if (top->has_value()) {
      if (!*lp) return Invalid("top_logprobs", "needs logprobs: true");
      g.set_top_logprobs(ClampInt32(**top));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint,
                                                 const std::string& body_text) {
  json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return Invalid("body", "is not valid JSON");
  if (!body.is_object()) return Invalid("body", "must be a JSON object");

  OpenAiRequest req;
  req.endpoint = endpoint;
  v1::GenerateRequest& g = req.generate;

  if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return Invalid("model", "must be a string");
    g.set_model(it->get<std::string>());
  }
  if (endpoint == OpenAiEndpoint::kChat) {
    if (absl::Status s = ParseMessages(body, &g); !s.ok()) return s;
  } else {
    if (absl::Status s = ParsePrompt(body, &g); !s.ok()) return s;
    // As in vLLM, completions return the text as the model wrote it, tags included.
    g.set_separate_reasoning(false);
  }

  if (absl::Status s = ParseUnsupported(body); !s.ok()) return s;
  if (absl::Status s = ParseResponseFormat(body, body_text, &g); !s.ok()) return s;
  if (absl::Status s = ParseTools(body, body_text, endpoint, &g); !s.ok()) return s;
  if (absl::Status s = ParseStreaming(body, &req); !s.ok()) return s;
  if (absl::Status s = ParseMaxTokens(body, endpoint, &g); !s.ok()) return s;
  if (absl::Status s = ParseStops(body, &g); !s.ok()) return s;
  if (absl::Status s = ParseSampling(body, &g); !s.ok()) return s;
  if (absl::Status s = ParseLogprobs(body, endpoint, &g); !s.ok()) return s;
  return req;
}

std::string ParamOf(const absl::Status& status) {
  const std::string msg(status.message());
  const size_t colon = msg.find(": ");
  if (colon == std::string::npos || msg.find(' ') < colon) return "";
  std::string param = msg.substr(0, colon);
  if (absl::StartsWith(param, "sampling.")) param = param.substr(9);
  if (absl::StartsWith(param, "chat.")) param = param.substr(5);
  return param;
}

bool IsUnknownModel(const absl::Status& status) {
  // ValidateModelName's "model: unknown model 'x'; ..." (and nothing else naming the model, such
  // as "model: must be a string").
  return status.code() == absl::StatusCode::kInvalidArgument && ParamOf(status) == "model" &&
         absl::StartsWith(status.message(), "model: unknown model");
}

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return IsUnknownModel(status) ? 404 : 400;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

json ErrorBody(const absl::Status& status) {
  const int http = HttpStatusFor(status);
  std::string type = "invalid_request_error";
  json code = nullptr;
  if (http == 401) {
    type = "authentication_error";
    code = "invalid_api_key";
  } else if (http == 404) {
    code = IsUnknownModel(status) ? json("model_not_found") : json("not_found");
  } else if (http == 429) {
    type = "rate_limit_error";
  } else if (http >= 500) {
    type = http == 503 ? "service_unavailable_error" : "server_error";
  }
  const std::string param = ParamOf(status);
  return ErrorBody(std::string(status.message()), type, param, code);
}

json ErrorBody(const std::string& message, const std::string& type, const std::string& param,
               const json& code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code}}}};
}

OpenAiResponseBuilder::OpenAiResponseBuilder(const OpenAiRequest& request, std::string id,
                                             std::string model, int64_t created,
                                             const Tokenizer* tokenizer)
    : endpoint_(request.endpoint),
      logprobs_(request.generate.logprobs()),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created),
      tokenizer_(tokenizer) {}

json OpenAiResponseBuilder::Logprobs(const v1::GenerateResponse& delta,
                                     int64_t* text_offset) const {
  if (!logprobs_) return nullptr;
  if (endpoint_ == OpenAiEndpoint::kChat) {
    json content = json::array();
    for (const v1::TokenLogprob& lp : delta.logprobs()) {
      const std::string token = tokenizer_->TokenText(lp.token_id());
      json top = json::array();
      for (const v1::TopLogprob& t : lp.top()) {
        const std::string alternative = tokenizer_->TokenText(t.token_id());
        top.push_back({{"token", TokenString(alternative)},
                       {"logprob", t.logprob()},
                       {"bytes", Bytes(alternative)}});
      }
      content.push_back({{"token", TokenString(token)},
                         {"logprob", lp.logprob()},
                         {"bytes", Bytes(token)},
                         {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  // Completions: text_offset is where each token starts in the completion text, in characters.
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const v1::TokenLogprob& lp : delta.logprobs()) {
    const std::string token = tokenizer_->TokenText(lp.token_id());
    tokens.push_back(TokenString(token));
    token_logprobs.push_back(lp.logprob());
    json alternatives = json::object();
    for (const v1::TopLogprob& t : lp.top()) {
      alternatives[TokenString(tokenizer_->TokenText(t.token_id()))] = t.logprob();
    }
    top.push_back(alternatives);
    offsets.push_back(*text_offset);
    *text_offset += CharsStarted(token);
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

json OpenAiResponseBuilder::UsageJson(const v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()}};
}

json OpenAiResponseBuilder::Chunk(const v1::GenerateResponse& delta, bool first) {
  json choice = {{"index", 0},
                 {"logprobs", Logprobs(delta, &stream_text_offset_)},
                 {"finish_reason", FinishJson(delta.finish_reason())}};
  json out = {{"id", id_}, {"created", created_}, {"model", model_}};
  if (delta.has_seed()) out["seed"] = delta.seed();
  if (endpoint_ == OpenAiEndpoint::kChat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    // vLLM's shape: a delta carries reasoning_content while the model reasons, content after.
    if (!delta.reasoning_text().empty()) d["reasoning_content"] = delta.reasoning_text();
    if (!delta.text().empty() || (delta.reasoning_text().empty() && delta.tool_calls().empty())) {
      d["content"] = delta.text();
    }
    if (!delta.tool_calls().empty()) {
      // Each call whole in one delta, with its index, id, type and name (OpenAI's first delta
      // of a call) and all of its arguments.
      json calls = json::array();
      for (int i = 0; i < delta.tool_calls_size(); ++i) {
        json call = ToolCallJson(delta.tool_calls(i));
        call["index"] = i;
        calls.push_back(std::move(call));
      }
      d["tool_calls"] = calls;
    }
    choice["delta"] = d;
    out["object"] = "chat.completion.chunk";
  } else {
    choice["text"] = delta.text();
    out["object"] = "text_completion";
  }
  out["choices"] = json::array({choice});
  return out;
}

json OpenAiResponseBuilder::UsageChunk(const v1::Usage& usage) const {
  return {
      {"id", id_},
      {"object", endpoint_ == OpenAiEndpoint::kChat ? "chat.completion.chunk" : "text_completion"},
      {"created", created_},
      {"model", model_},
      {"choices", json::array()},
      {"usage", UsageJson(usage)}};
}

void OpenAiResponseBuilder::Add(const v1::GenerateResponse& delta) {
  text_ += delta.text();
  reasoning_ += delta.reasoning_text();
  all_.mutable_tool_calls()->MergeFrom(delta.tool_calls());
  all_.mutable_token_ids()->MergeFrom(delta.token_ids());
  all_.mutable_logprobs()->MergeFrom(delta.logprobs());
  if (delta.has_seed()) all_.set_seed(delta.seed());
  if (delta.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    finish_ = delta.finish_reason();
    usage_ = delta.usage();
  }
}

json OpenAiResponseBuilder::Final() const {
  int64_t text_offset = 0;
  json choice = {{"index", 0},
                 {"logprobs", Logprobs(all_, &text_offset)},
                 {"finish_reason", FinishJson(finish_)}};
  json out = {{"id", id_}, {"created", created_}, {"model", model_}};
  if (all_.has_seed()) out["seed"] = all_.seed();
  if (endpoint_ == OpenAiEndpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", text_}};
    if (!reasoning_.empty()) choice["message"]["reasoning_content"] = reasoning_;
    if (!all_.tool_calls().empty()) {
      json calls = json::array();
      for (const v1::ToolCall& c : all_.tool_calls()) calls.push_back(ToolCallJson(c));
      choice["message"]["tool_calls"] = calls;
      if (text_.empty()) choice["message"]["content"] = nullptr;
    }
    out["object"] = "chat.completion";
  } else {
    choice["text"] = text_;
    out["object"] = "text_completion";
  }
  out["choices"] = json::array({choice});
  out["usage"] = UsageJson(usage_);
  return out;
}

}  // namespace shardserve
