#!/usr/bin/env python3
"""Asks each gRPC server for grpc.health.v1 status and, through v1alpha server reflection, for
its service list. Prints one JSON object: {address: {"health": "...", "services": [...]}}.
Needs the stubs from clients/python/generate_stubs.sh on PYTHONPATH."""
import json
import sys

import grpc

import health_pb2
import health_pb2_grpc
import reflection_pb2
import reflection_pb2_grpc


def probe(address: str) -> dict:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        services = []
        for r in responses:
            services.extend(s.name for s in r.list_services_response.service)
            break
        return {
            "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            "services": sorted(services),
        }


if __name__ == "__main__":
    print(json.dumps({a: probe(a) for a in sys.argv[1:]}))
