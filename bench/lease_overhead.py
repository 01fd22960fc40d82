"""What a lease adds to CreateTask and GetTask, over gRPC, local backend.

One served connector, one ready fleet of each kind on the same graph: a shared one (`share=`) and an
ordinary one. Then, interleaved, `--calls` times each:

- CreateTask: a new execution joining the shared fleet (takes a lease: flock, JSON read/write, the
  provisioner's adopting create) vs a retried CreateTask of the ordinary fleet's execution (adopting
  create only);
- GetTask of a ready fleet: shared (renews the lease, then the status read) vs ordinary.

    .venv/bin/python -m bench.lease_overhead [--calls 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flyte_agent import DataServiceConfig, DataServiceTask
from flyte_agent.connector import DATA_SERVICE_TASK_TYPE
from graph_engine.convert import convert
from tests.test_connector_grpc import Connector, serialized
from tests.test_graph_server import ring_graph


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = convert(ring_graph(), str(Path(tmp) / "ring"), partitions=2)
        connector = Connector(Path(tmp) / "state", {})
        try:
            connector.wait_serving()
            shared = serialized(DataServiceTask(name="g", config=DataServiceConfig(graph_uri=uri, share="b")))
            plain = serialized(DataServiceTask(name="g", config=DataServiceConfig(graph_uri=uri)))
            shared_meta = connector.create(shared, name="first")
            plain_meta = connector.create(plain, name="plain")
            for meta in (shared_meta, plain_meta):
                connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
            times: dict[str, list[float]] = {k: [] for k in ("create shared", "create plain", "get shared",
                                                             "get plain")}
            for i in range(args.calls):
                times["create shared"].append(timed(lambda i=i: connector.create(shared, name=f"join-{i}")))
                times["create plain"].append(timed(lambda: connector.create(plain, name="plain")))
                times["get shared"].append(timed(lambda: connector.get(DATA_SERVICE_TASK_TYPE, shared_meta)))
                times["get plain"].append(timed(lambda: connector.get(DATA_SERVICE_TASK_TYPE, plain_meta)))
        finally:
            connector.stop()
    print(f"{args.calls} calls each, interleaved, ms (median, max):")
    for key, values in times.items():
        print(f"  {key}: {statistics.median(values):.1f}, {max(values):.1f}")


if __name__ == "__main__":
    main()
