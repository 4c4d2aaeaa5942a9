#!/usr/bin/env python3
"""KServe v2 (inference.GRPCInferenceService) from Python: readiness, metadata, ModelInfer and
ModelStreamInfer with BYTES text_input -> text_output. Prints one JSON object.
Usage: kserve_client.py ADDRESS PROMPT MAX_TOKENS"""
import json
import struct
import sys

import grpc

from kserve.v2 import grpc_predict_v2_pb2 as pb
from kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc


def infer_request(prompt: str, max_tokens: int, raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="stories260K", id="kserve-1")
    text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    limit = request.inputs.add(name="max_tokens", datatype="INT32", shape=[1])
    temperature = request.inputs.add(name="temperature", datatype="FP32", shape=[1])
    if raw:
        # Raw form, as tritonclient sends it: BYTES elements are length-prefixed.
        data = prompt.encode()
        request.raw_input_contents.extend([
            struct.pack("<I", len(data)) + data,
            struct.pack("<i", max_tokens),
            struct.pack("<f", 0.0),
        ])
    else:
        text.contents.bytes_contents.append(prompt.encode())
        limit.contents.int_contents.append(max_tokens)
        temperature.contents.fp32_contents.append(0.0)
    return request


def main() -> None:
    address, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        out = {
            "live": stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live,
            "ready": stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready,
            "model_ready": stub.ModelReady(pb.ModelReadyRequest(name="stories260K"), timeout=10).ready,
            "server": stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name,
        }
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="stories260K"), timeout=10)
        out["inputs"] = [t.name for t in meta.inputs]
        out["outputs"] = [t.name for t in meta.outputs]

        response = stub.ModelInfer(infer_request(prompt, max_tokens, raw=False), timeout=60)
        out["infer_id"] = response.id
        out["infer_text"] = response.outputs[0].contents.bytes_contents[0].decode()
        raw = stub.ModelInfer(infer_request(prompt, max_tokens, raw=True), timeout=60)
        out["raw_text"] = raw.outputs[0].contents.bytes_contents[0].decode()

        pieces, finals, errors = [], [], []
        requests = [infer_request(prompt, max_tokens, raw=False),
                    pb.ModelInferRequest(model_name="stories260K", id="bad")]
        for r in stub.ModelStreamInfer(iter(requests), timeout=60):
            if r.error_message:
                errors.append(r.error_message)
                continue
            pieces.append(r.infer_response.outputs[0].contents.bytes_contents[0].decode())
            finals.append(r.infer_response.parameters["triton_final_response"].bool_param)
        out["stream_text"] = "".join(pieces)
        out["stream_responses"] = len(pieces)
        out["stream_final_flags"] = [finals.count(True), finals[-1] if finals else None]
        out["stream_errors"] = errors

        try:
            stub.ModelInfer(pb.ModelInferRequest(model_name="other"), timeout=10)
            out["wrong_model"] = "OK"
        except grpc.RpcError as e:
            out["wrong_model"] = e.code().name
    print(json.dumps(out))


if __name__ == "__main__":
    main()
