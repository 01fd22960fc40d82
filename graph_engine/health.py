"""gRPC health checks of graph-engine endpoints.

A DeepGNN server opens its port only after its partitions are loaded and then answers
`grpc.health.v1.Health/Check` with SERVING, so SERVING means "graph loaded".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class EndpointsNotReady(TimeoutError):
    """Some endpoints did not answer SERVING in time; `endpoints` lists them."""

    def __init__(self, endpoints: list[str], timeout: float) -> None:
        self.endpoints = endpoints
        super().__init__(
            f"graph-engine endpoints not SERVING after {timeout:g}s: {', '.join(endpoints)} "
            "(still loading, crashed, or the address is wrong; check the server logs)")


def check(endpoint: str, timeout: float = 2.0) -> bool:
    """True when `endpoint` (host:port) answers gRPC health SERVING within `timeout` seconds."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def not_ready(endpoints: Sequence[str], timeout: float = 1.0) -> list[str]:
    """The endpoints that do not answer SERVING now."""
    return [e for e in endpoints if not check(e, timeout)]


def wait_ready(endpoints: Sequence[str], timeout: float, interval: float = 0.2) -> None:
    """Return once every endpoint answers SERVING; raise EndpointsNotReady naming the others."""
    if not endpoints:
        raise ValueError("wait_ready: no endpoints given; pass host:port strings")
    deadline = time.monotonic() + timeout
    pending = list(endpoints)
    while True:
        remaining = deadline - time.monotonic()
        pending = not_ready(pending, timeout=max(0.1, min(1.0, remaining)))
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise EndpointsNotReady(pending, timeout)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
