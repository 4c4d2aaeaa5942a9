#include "router/kserve_service.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "router/validation.h"

namespace shardserve {
namespace {

using inference::InferParameter;
using inference::ModelInferRequest;

absl::Status Invalid(const std::string& tensor, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(tensor, ": ", what));
}

// One input tensor's elements, from `contents` or from raw_input_contents.
class InputReader {
 public:
  InputReader(const ModelInferRequest& request, int index)
      : tensor_(request.inputs(index)),
        raw_(index < request.raw_input_contents_size() ? &request.raw_input_contents(index)
                                                       : nullptr) {}

  absl::StatusOr<std::vector<std::string>> Bytes() const {
    if (tensor_.datatype() != "BYTES") return Invalid(tensor_.name(), "must be BYTES");
    if (raw_ == nullptr) {
      return std::vector<std::string>(tensor_.contents().bytes_contents().begin(),
                                      tensor_.contents().bytes_contents().end());
    }
    // Raw BYTES: each element is a 4-byte little-endian length, then the bytes.
    std::vector<std::string> out;
    size_t at = 0;
    while (at < raw_->size()) {
      if (raw_->size() - at < 4) return Invalid(tensor_.name(), "truncated raw BYTES length");
      uint32_t len = 0;
      for (int i = 3; i >= 0; --i) len = (len << 8) | static_cast<uint8_t>((*raw_)[at + i]);
      at += 4;
      if (raw_->size() - at < len) return Invalid(tensor_.name(), "truncated raw BYTES element");
      out.push_back(raw_->substr(at, len));
      at += len;
    }
    return out;
  }

  // The single element of a numeric tensor, as double.
  absl::StatusOr<double> Scalar() const {
    const std::string& t = tensor_.datatype();
    const auto& c = tensor_.contents();
    auto one = [&](size_t n) -> absl::Status {
      return n == 1 ? absl::OkStatus() : Invalid(tensor_.name(), "must hold exactly one value");
    };
    if (raw_ != nullptr) {
      auto read = [&](auto v) -> absl::StatusOr<double> {
        if (raw_->size() != sizeof(v))
          return Invalid(tensor_.name(), "must hold exactly one value");
        std::memcpy(&v, raw_->data(), sizeof(v));
        return static_cast<double>(v);
      };
      if (t == "INT32") return read(int32_t{});
      if (t == "INT64") return read(int64_t{});
      if (t == "UINT32") return read(uint32_t{});
      if (t == "UINT64") return read(uint64_t{});
      if (t == "FP32") return read(float{});
      if (t == "FP64") return read(double{});
      if (t == "BOOL") return read(uint8_t{});
    } else {
      if (t == "INT8" || t == "INT16" || t == "INT32") {
        if (auto s = one(c.int_contents_size()); !s.ok()) return s;
        return c.int_contents(0);
      }
      if (t == "INT64") {
        if (auto s = one(c.int64_contents_size()); !s.ok()) return s;
        return static_cast<double>(c.int64_contents(0));
      }
      if (t == "UINT8" || t == "UINT16" || t == "UINT32") {
        if (auto s = one(c.uint_contents_size()); !s.ok()) return s;
        return c.uint_contents(0);
      }
      if (t == "UINT64") {
        if (auto s = one(c.uint64_contents_size()); !s.ok()) return s;
        return static_cast<double>(c.uint64_contents(0));
      }
      if (t == "FP32") {
        if (auto s = one(c.fp32_contents_size()); !s.ok()) return s;
        return c.fp32_contents(0);
      }
      if (t == "FP64") {
        if (auto s = one(c.fp64_contents_size()); !s.ok()) return s;
        return c.fp64_contents(0);
      }
      if (t == "BOOL") {
        if (auto s = one(c.bool_contents_size()); !s.ok()) return s;
        return c.bool_contents(0) ? 1 : 0;
      }
    }
    return Invalid(tensor_.name(), absl::StrCat("datatype ", t, " is not a number type"));
  }

 private:
  const ModelInferRequest::InferInputTensor& tensor_;
  const std::string* raw_;
};

absl::StatusOr<double> ParameterNumber(const std::string& name, const InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case InferParameter::kInt64Param:
      return static_cast<double>(p.int64_param());
    case InferParameter::kBoolParam:
      return p.bool_param() ? 1 : 0;
    case InferParameter::kStringParam: {
      char* end = nullptr;
      const double v = std::strtod(p.string_param().c_str(), &end);
      if (end == p.string_param().c_str() || *end != '\0') {
        return Invalid(name, "must be a number");
      }
      return v;
    }
    default:
      return Invalid(name, "has no value");
  }
}

absl::Status ApplyNumber(const std::string& name, double v, v1::GenerateRequest* out) {
  v1::SamplingParameters* s = out->mutable_sampling();
  if (name == "max_tokens") {
    out->set_max_tokens(static_cast<int32_t>(std::clamp<double>(v, INT32_MIN, INT32_MAX)));
  } else if (name == "temperature") {
    s->set_temperature(static_cast<float>(v));
  } else if (name == "top_p") {
    s->set_top_p(static_cast<float>(v));
  } else if (name == "top_k") {
    s->set_top_k(static_cast<int32_t>(std::clamp<double>(v, 0, INT32_MAX)));
  } else if (name == "seed" || name == "random_seed") {
    s->set_seed(static_cast<uint64_t>(std::max<double>(0, v)));
  } else if (name == "min_p") {
    s->set_min_p(static_cast<float>(v));
  } else if (name == "ignore_eos") {
    out->set_ignore_eos(v != 0);
  }
  return absl::OkStatus();
}

bool IsNumberName(const std::string& name) {
  return name == "max_tokens" || name == "temperature" || name == "top_p" || name == "top_k" ||
         name == "seed" || name == "random_seed" || name == "min_p" || name == "ignore_eos";
}

inference::ModelInferResponse TextOutput(const ModelInferRequest& request, const std::string& model,
                                         const std::string& text) {
  inference::ModelInferResponse out;
  out.set_model_name(model);
  out.set_model_version("1");
  out.set_id(request.id());
  auto* tensor = out.add_outputs();
  tensor->set_name("text_output");
  tensor->set_datatype("BYTES");
  tensor->add_shape(1);
  tensor->mutable_contents()->add_bytes_contents(text);
  return out;
}

}  // namespace

absl::StatusOr<v1::GenerateRequest> GenerateRequestFromInfer(const ModelInferRequest& request) {
  if (request.raw_input_contents_size() > 0 &&
      request.raw_input_contents_size() != request.inputs_size()) {
    return Invalid("raw_input_contents", "must have one entry per input");
  }
  v1::GenerateRequest out;
  out.set_model(request.model_name());
  out.set_request_id(request.id());
  out.set_max_tokens(16);
  for (const auto& [name, value] : request.parameters()) {
    if (!IsNumberName(name)) continue;
    auto v = ParameterNumber(name, value);
    if (!v.ok()) return v.status();
    if (absl::Status s = ApplyNumber(name, *v, &out); !s.ok()) return s;
  }
  bool has_text = false;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const std::string& name = request.inputs(i).name();
    InputReader reader(request, i);
    if (name == "text_input") {
      auto texts = reader.Bytes();
      if (!texts.ok()) return texts.status();
      if (texts->size() != 1) return Invalid(name, "must hold exactly one prompt");
      out.set_text((*texts)[0]);
      has_text = true;
    } else if (name == "stop_words" || name == "stop") {
      auto stops = reader.Bytes();
      if (!stops.ok()) return stops.status();
      for (std::string& s : *stops) out.add_stop(std::move(s));
    } else if (IsNumberName(name)) {
      auto v = reader.Scalar();
      if (!v.ok()) return v.status();
      if (absl::Status s = ApplyNumber(name, *v, &out); !s.ok()) return s;
    } else if (name != "stream" && name != "exclude_input_in_output") {
      return Invalid(name,
                     "is not an input of this model (text_input, max_tokens, temperature, "
                     "top_p, top_k, seed, stop_words, ignore_eos)");
    }
  }
  if (!has_text) return Invalid("text_input", "is required (BYTES, one element)");
  return out;
}

KServeService::KServeService(InferenceServiceImpl* service) : service_(service) {}

absl::Status KServeService::CheckModel(const std::string& name) const {
  // InferenceService's check, so both APIs answer an unknown model alike: INVALID_ARGUMENT
  // "model: unknown model '<name>'; this router serves '<served>'".
  ModelLimits limits;
  limits.name = service_->model_name();
  return ValidateModelName(name, limits);
}

grpc::Status KServeService::ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* response) {
  response->set_live(true);
  return grpc::Status::OK;
}

grpc::Status KServeService::ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* response) {
  response->set_ready(service_->serving());
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelReady(grpc::ServerContext*,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) {
  if (absl::Status s = CheckModel(request->name()); !s.ok()) return ToGrpc(s);
  response->set_ready(service_->serving());
  return grpc::Status::OK;
}

grpc::Status KServeService::ServerMetadata(grpc::ServerContext*,
                                           const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse* response) {
  response->set_name("shardserve");
  response->set_version("0.1.0");
  response->add_extensions("model_stream_infer");
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelMetadata(grpc::ServerContext*,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) {
  if (absl::Status s = CheckModel(request->name()); !s.ok()) return ToGrpc(s);
  response->set_name(service_->model_name());
  response->add_versions("1");
  response->set_platform("shardserve");
  auto add = [](auto* list, const char* name, const char* type) {
    auto* t = list->Add();
    t->set_name(name);
    t->set_datatype(type);
    t->add_shape(name == std::string("stop_words") ? -1 : 1);
  };
  add(response->mutable_inputs(), "text_input", "BYTES");
  add(response->mutable_inputs(), "max_tokens", "INT32");
  add(response->mutable_inputs(), "temperature", "FP32");
  add(response->mutable_inputs(), "top_p", "FP32");
  add(response->mutable_inputs(), "top_k", "INT32");
  add(response->mutable_inputs(), "seed", "UINT64");
  add(response->mutable_inputs(), "stop_words", "BYTES");
  add(response->mutable_outputs(), "text_output", "BYTES");
  return grpc::Status::OK;
}

absl::Status KServeService::Run(grpc::ServerContext* context, const ModelInferRequest& request,
                                const DeltaFn& on_delta) {
  if (grpc::Status auth = service_->Authorize(context); !auth.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(auth.error_code()), auth.error_message());
  }
  if (absl::Status s = CheckModel(request.model_name()); !s.ok()) return s;
  auto generate = GenerateRequestFromInfer(request);
  if (!generate.ok()) return generate.status();
  auto started = service_->Start(*generate);
  if (!started.ok()) return started.status();
  InferenceServiceImpl::Generation& g = *started;
  const auto deadline = context->deadline();
  while (true) {
    v1::GenerateResponse delta;
    bool done = false;
    absl::Status error;
    if (service_->Next(g, absl::Milliseconds(50), &delta, &done, &error) &&
        delta.ByteSizeLong() > 0 && !on_delta(delta)) {
      service_->Cancel(g);
      return absl::CancelledError("client went away");
    }
    if (done) return error;
    const bool late = std::chrono::system_clock::now() >= deadline;
    if (late || context->IsCancelled()) {
      service_->Cancel(g);
      return late ? absl::DeadlineExceededError(
                        absl::StrCat("deadline passed after ", g.sequence->generated(), " tokens"))
                  : absl::CancelledError("cancelled by the client");
    }
  }
}

grpc::Status KServeService::ModelInfer(grpc::ServerContext* context,
                                       const ModelInferRequest* request,
                                       inference::ModelInferResponse* response) {
  std::string text;
  absl::Status s = Run(context, *request, [&](const v1::GenerateResponse& delta) {
    text += delta.text();
    return true;
  });
  if (!s.ok()) return ToGrpc(s);
  *response = TextOutput(*request, service_->model_name(), text);
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelStreamInfer(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<inference::ModelStreamInferResponse, ModelInferRequest>* stream) {
  ModelInferRequest request;
  while (stream->Read(&request)) {
    bool written = true;
    absl::Status s = Run(context, request, [&](const v1::GenerateResponse& delta) {
      inference::ModelStreamInferResponse out;
      *out.mutable_infer_response() = TextOutput(request, service_->model_name(), delta.text());
      (*out.mutable_infer_response()->mutable_parameters())["triton_final_response"].set_bool_param(
          delta.finish_reason() != v1::FINISH_REASON_UNSPECIFIED);
      written = stream->Write(out);
      return written;
    });
    if (!written || context->IsCancelled()) return grpc::Status::CANCELLED;
    if (!s.ok()) {
      // Errors are in-band, so the stream can go on with the next request.
      inference::ModelStreamInferResponse out;
      out.set_error_message(std::string(s.message()));
      out.mutable_infer_response()->set_id(request.id());
      if (!stream->Write(out)) return grpc::Status::CANCELLED;
    }
  }
  return grpc::Status::OK;
}

}  // namespace shardserve
