// KServeService: the Open Inference Protocol v2 (KServe / Triton) gRPC API on the router,
// `inference.GRPCInferenceService`, for clients built for Triton's LLM models.
//
// The served model takes a BYTES tensor `text_input` (one element: the prompt) and optional
// scalar tensors `max_tokens` (INT32/INT64), `temperature` and `top_p` (FP32/FP64), `top_k`
// (INT32), `seed` (UINT64/INT64) and `stop_words` (BYTES, any count), as Triton's vLLM and
// TensorRT-LLM models take them; the same names also work as request parameters. It returns
// BYTES `text_output`: the whole completion from ModelInfer, one delta per response from
// ModelStreamInfer (the last carrying parameter `triton_final_response: true`).
//
// Generation goes through InferenceServiceImpl::Start/Next/Cancel, like every other front end.
// A model name other than the served one (ModelReady, ModelMetadata, ModelInfer,
// ModelStreamInfer; empty means the served model) is INVALID_ARGUMENT naming it, as
// InferenceService answers it.
// Thread-safe; `service` must outlive this object.
#ifndef SHARDSERVE_ROUTER_KSERVE_SERVICE_H_
#define SHARDSERVE_ROUTER_KSERVE_SERVICE_H_

#include <functional>
#include <string>

#include "kserve/v2/grpc_predict_v2.grpc.pb.h"
#include "router/inference_service.h"

namespace shardserve {

// Turns a v2 infer request into a GenerateRequest; INVALID_ARGUMENT naming the tensor.
absl::StatusOr<v1::GenerateRequest> GenerateRequestFromInfer(
    const inference::ModelInferRequest& request);

class KServeService final : public inference::GRPCInferenceService::Service {
 public:
  explicit KServeService(InferenceServiceImpl* service);

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse*) override;
  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse*) override;
  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest*,
                          inference::ModelReadyResponse*) override;
  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse*) override;
  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest*,
                             inference::ModelMetadataResponse*) override;
  grpc::Status ModelInfer(grpc::ServerContext*, const inference::ModelInferRequest*,
                          inference::ModelInferResponse*) override;
  grpc::Status ModelStreamInfer(grpc::ServerContext*,
                                grpc::ServerReaderWriter<inference::ModelStreamInferResponse,
                                                         inference::ModelInferRequest>*) override;

 private:
  using DeltaFn = std::function<bool(const v1::GenerateResponse& delta)>;
  // Runs one generation, handing every delta to `on_delta` (false: the client went away).
  absl::Status Run(grpc::ServerContext* context, const inference::ModelInferRequest& request,
                   const DeltaFn& on_delta);
  // OK for "" or the served model; INVALID_ARGUMENT "model: unknown model '<name>'; ..." else.
  absl::Status CheckModel(const std::string& name) const;

  InferenceServiceImpl* const service_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_KSERVE_SERVICE_H_
