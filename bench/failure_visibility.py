"""How long a user waits, after a graph-engine server crashes, for a FAILED message with log links.

A local fleet of 2 servers is provisioned over gRPC (`pyflyte serve connector` on loopback) from a
graph whose second server's partition file is missing: that server exits with code 1 before loading
(it checks its files against the graph's manifest), is restarted `MAX_RESTARTS` times like a
StatefulSet pod, then the fleet fails. GetTask is polled every `--poll` seconds (propeller polls
every 10-30 s; locally flytekit polls every 1 s). Reported per run:

- crash -> first GetTask that says so ("1 restarting: exit code 1");
- crash -> FAILED with the server's log tail and a link to each server's log;
- CreateTask -> FAILED.

The crash time is the first exit of server 1: the mtime of its `.reason` file as first written.

    .venv/bin/python -m bench.failure_visibility [--runs 3] [--poll 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flyteidl.core import execution_pb2

from flyte_agent import DataServiceConfig, DataServiceTask
from flyte_agent.local_provisioner import MAX_RESTARTS
from graph_engine.convert import convert
from infra.contract import DATA_SERVICE_TASK_TYPE
from tests.test_connector_grpc import Connector, serialized
from tests.test_graph_server import ring_graph


def one_run(work: Path, poll: float) -> dict[str, float]:
    uri = convert(ring_graph(), str(work / "ring"), partitions=2)
    (work / "ring" / "node_1_0.map").unlink()
    connector = Connector(work / "state", {})
    try:
        connector.wait_serving()
        task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=2))
        created = time.time()
        meta = connector.create(serialized(task))
        first_crash = seen_crash = 0.0
        while True:
            resource = connector.get(DATA_SERVICE_TASK_TYPE, meta)
            now = time.time()
            reasons = list((work / "state").glob("*/server-1.reason"))
            if reasons and not first_crash:
                first_crash = reasons[0].stat().st_mtime
            if "restarting: exit code 1" in resource.message and not seen_crash:
                seen_crash = now
            if resource.phase == execution_pb2.TaskExecution.FAILED:
                assert len(resource.log_links) == 2 and "node_1_0.map" in resource.message, resource
                return {"crash_seen": seen_crash - first_crash, "crash_to_failed": now - first_crash,
                        "create_to_failed": now - created}
            if now - created > 300:
                raise TimeoutError(resource.message)
            time.sleep(poll)
    finally:
        connector.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(one_run(Path(tmp), args.poll))
        print(f"run {run}: " + ", ".join(f"{k} {v:.1f}s" for k, v in results[-1].items()), flush=True)
    print(f"MAX_RESTARTS={MAX_RESTARTS}, GetTask every {args.poll}s, {args.runs} runs (median, max):")
    for key in results[0]:
        values = [r[key] for r in results]
        print(f"  {key}: {statistics.median(values):.1f}s, {max(values):.1f}s")


if __name__ == "__main__":
    main()
