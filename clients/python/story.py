#!/usr/bin/env python3
"""Streams a story from a shardserve router over gRPC (shardserve.v1.InferenceService.Generate).

Shows the two things every production client sets: a deadline on the call (grpc's `timeout`),
and an API key sent as `authorization: Bearer <key>` metadata (for a gateway or a router that
checks it).

    ./generate_stubs.sh gen
    PYTHONPATH=gen python3 story.py --server localhost:50051 --prompt "Once upon a time"
"""
import argparse
import json
import sys

import grpc

from shardserve.v1 import inference_pb2, inference_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline-s", type=float, default=30.0, help="deadline for the call")
    parser.add_argument("--api-key", default="", help="sent as authorization: Bearer <key>")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()

    request = inference_pb2.GenerateRequest(
        text=args.prompt,
        max_tokens=args.max_tokens,
        sampling=inference_pb2.SamplingParameters(temperature=args.temperature, seed=args.seed),
    )
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []
    text, ids, finish, usage = [], [], None, None
    with grpc.insecure_channel(args.server) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            for response in stub.Generate(request, timeout=args.deadline_s, metadata=metadata):
                text.append(response.text)
                ids.extend(response.token_ids)
                if not args.json:
                    sys.stdout.write(response.text)
                    sys.stdout.flush()
                if response.finish_reason:
                    finish = inference_pb2.FinishReason.Name(response.finish_reason)
                    usage = response.usage
        except grpc.RpcError as e:
            print(f"\nstory.py: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({
            "text": "".join(text),
            "ids": ids,
            "finish_reason": finish,
            "completion_tokens": usage.completion_tokens if usage else 0,
        }))
    else:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
