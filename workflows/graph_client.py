"""How a trainer reaches its graph: the data service's endpoints from `GRAPHFLEET_ENDPOINTS`, a
`DistributedGraph` client opened once every server is healthy, or the graph loaded in this process.

Both handles answer the trainer the same way (`workflows.sampler.GraphHandle`): one code path, two
graph handles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from infra.contract import ENDPOINTS_ENV
from workflows.sampler import GraphHandle

# waitForReady makes a call issued during a short outage wait for the channel instead of failing
# at once; the retry policy is also what DeepGNN's Python-side retryer reads (it parses whole seconds).
GRPC_OPTIONS = [("grpc.service_config", json.dumps({"methodConfig": [{
    "name": [{}],
    "waitForReady": True,
    "timeout": "30s",
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "1s", "maxBackoff": "4s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]}))]


def endpoints_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """`GRAPHFLEET_ENDPOINTS` as a list of host:port; a clear error when unset or malformed."""
    value = (os.environ if environ is None else environ).get(ENDPOINTS_ENV, "")
    endpoints = [e.strip() for e in value.split(",") if e.strip()]
    if not endpoints:
        raise ValueError(f"{ENDPOINTS_ENV} is not set: set it to the graph-engine servers as "
                         "host:port,host:port (in ordinal order), as the data-service task hands them out")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{ENDPOINTS_ENV}: {endpoint!r} is not host:port (e.g. 127.0.0.1:50051)")
    return endpoints


def open_service(endpoints: Sequence[str], ready_seconds: float = 60.0) -> GraphHandle:
    """A `DistributedGraph` client, opened only once every endpoint answers gRPC health SERVING.

    The client aborts the whole process if its first server is down when it is created, so the
    check comes first and fails with the names of the endpoints that are not serving.
    """
    from deepgnn.graph_engine.snark.client import DistributedGraph

    from graph_engine.health import wait_ready

    wait_ready(endpoints, ready_seconds)
    return DistributedGraph(list(endpoints), grpc_options=GRPC_OPTIONS)


def open_graph(uri: str, endpoints: Sequence[str], partitions: int) -> GraphHandle:
    """The graph through the data service at `endpoints`; with none, loaded in this process (the
    benchmark's baseline and tests)."""
    if endpoints:
        return open_service(endpoints)
    from deepgnn.graph_engine.snark.client import MemoryGraph

    from graph_engine.server import loadable_path

    return MemoryGraph(loadable_path(uri), list(range(partitions)))
