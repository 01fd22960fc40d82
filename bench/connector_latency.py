"""Connector latency over gRPC, as FlytePropeller sees it.

1. CreateTask / GetTask latency (p50, p99) with 1, 16, 64 concurrent executions. The tasks `reuse`
   a shared service (one local fleet named in GRAPHFLEET_SHARED_SERVICES), so the numbers are the
   connector path itself (decode, validate, health-check, encode), not 64 graph loads on 2 cores.
2. CreateTask -> SUCCEEDED for a fresh local fleet of 1, 2 and 4 servers on Cora, next to loading
   the same graph in-process.

    .venv/bin/python -m bench.connector_latency [--backend local] [--concurrency 1,16,64] [--fleets 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from flyteidl.admin import agent_pb2
from flyteidl.core import execution_pb2, identifier_pb2
from flyteidl.service.agent_pb2_grpc import AsyncAgentServiceStub
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.tools.translator import get_serializable

from flyte_agent import DataServiceTask
from flyte_agent.connector import DATA_SERVICE_TASK_TYPE
from graph_engine import health
from graph_engine.convert import convert
from graph_engine.datasets import load_planetoid

PLANETOID = Path("/work/shared/data/planetoid")
SETTINGS = SerializationSettings(ImageConfig.auto_default_image(), project="bench", domain="dev",
                                 version="v1")
CATEGORY = agent_pb2.TaskCategory(name=DATA_SERVICE_TASK_TYPE, version=0)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metadata(run: str) -> agent_pb2.TaskExecutionMetadata:
    wf = identifier_pb2.WorkflowExecutionIdentifier(project="bench", domain="dev", name=run)
    return agent_pb2.TaskExecutionMetadata(task_execution_id=identifier_pb2.TaskExecutionIdentifier(
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(node_id="n0", execution_id=wf)))


def template_and_inputs(task: DataServiceTask, **inputs: Any) -> tuple[Any, Any]:
    template = get_serializable(OrderedDict(), SETTINGS, task).template.to_flyte_idl()
    ctx = FlyteContextManager.current_context()
    literals = TypeEngine.dict_to_literal_map(ctx, inputs, task.python_interface.inputs).to_flyte_idl()
    return template, literals


def start_connector(backend: str, state_dir: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from flyte_agent.connector import serve_on_loopback; "
         f"serve_on_loopback({port}, {free_port()})"],
        env={**os.environ, **env, "GRAPHFLEET_BACKEND": backend, "GRAPHFLEET_STATE_DIR": state_dir},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    endpoint = f"127.0.0.1:{port}"
    health.wait_ready([endpoint], timeout=90)
    return proc, endpoint


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def concurrent_latency(stub: AsyncAgentServiceStub, template: Any, concurrency: int,
                       rounds: int) -> dict[str, float]:
    def one(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        meta = stub.CreateTask(agent_pb2.CreateTaskRequest(
            template=template, output_prefix="/tmp/unused", task_execution_metadata=metadata(f"c{i}")),
            timeout=10).resource_meta
        t1 = time.perf_counter()
        resource = stub.GetTask(agent_pb2.GetTaskRequest(task_category=CATEGORY, resource_meta=meta),
                                timeout=10).resource
        t2 = time.perf_counter()
        assert resource.phase == execution_pb2.TaskExecution.SUCCEEDED, resource.message
        return t1 - t0, t2 - t1

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(concurrency * rounds)))
    creates = [c * 1000 for c, _ in results]
    gets = [g * 1000 for _, g in results]
    return {"create_p50_ms": statistics.median(creates), "create_p99_ms": percentile(creates, 0.99),
            "get_p50_ms": statistics.median(gets), "get_p99_ms": percentile(gets, 0.99)}


def time_to_ready(stub: AsyncAgentServiceStub, uri: str, replicas: int) -> float:
    task = DataServiceTask(name="bench_graph", config={"replicas": 1})
    template, inputs = template_and_inputs(task, graph_uri=uri, replicas=replicas)
    t0 = time.perf_counter()
    meta = stub.CreateTask(agent_pb2.CreateTaskRequest(
        template=template, inputs=inputs, output_prefix="/tmp/unused",
        task_execution_metadata=metadata(f"ready{replicas}")), timeout=10).resource_meta
    while True:
        resource = stub.GetTask(agent_pb2.GetTaskRequest(task_category=CATEGORY, resource_meta=meta),
                                timeout=10).resource
        if resource.phase == execution_pb2.TaskExecution.SUCCEEDED:
            elapsed = time.perf_counter() - t0
            break
        if resource.phase == execution_pb2.TaskExecution.FAILED or time.perf_counter() - t0 > 300:
            raise RuntimeError(resource.message or "not ready after 300 s")
        time.sleep(0.05)
    stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_category=CATEGORY, resource_meta=meta), timeout=30)
    return elapsed


def in_process_load_seconds(uri: str) -> float:
    from deepgnn.graph_engine.snark.local import Client

    t0 = time.perf_counter()
    client = Client(uri, partitions=list(range(4)))
    elapsed = time.perf_counter() - t0
    client.reset()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", help="GRAPHFLEET_BACKEND of the served connector")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3, help="executions per concurrent caller")
    parser.add_argument("--fleets", default="1,2,4", help="fleet sizes for time-to-ready")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="graphfleet-bench-") as scratch:
        uri = convert(load_planetoid("cora", PLANETOID), f"{scratch}/cora", partitions=4)
        shared_port = free_port()
        shared = subprocess.Popen(
            [sys.executable, "-m", "graph_engine.server", "--data-dir", uri, "--port", str(shared_port),
             "--ordinal", "0", "--replicas", "1", "--partitions", "4", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        connector = None
        try:
            health.wait_ready([f"127.0.0.1:{shared_port}"], timeout=120)
            env = {"GRAPHFLEET_SHARED_SERVICES": json.dumps({"cora": [f"127.0.0.1:{shared_port}"]})}
            connector, endpoint = start_connector(args.backend, f"{scratch}/state", env)
            with grpc.insecure_channel(endpoint) as channel:
                stub = AsyncAgentServiceStub(channel)
                reuse, _ = template_and_inputs(DataServiceTask(name="bench_reuse", config={"reuse": "cora"}))
                results: dict[str, Any] = {"backend": args.backend, "latency": {}, "time_to_ready_s": {}}
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    results["latency"][concurrency] = concurrent_latency(stub, reuse, concurrency,
                                                                         args.rounds)
                for replicas in (int(r) for r in args.fleets.split(",")):
                    results["time_to_ready_s"][replicas] = time_to_ready(stub, uri, replicas)
            results["in_process_load_s"] = in_process_load_seconds(uri)
            print(json.dumps(results, indent=2))
        finally:
            if connector is not None:
                connector.send_signal(2)
                connector.wait(timeout=30)
            shared.terminate()
            shared.wait(timeout=30)


if __name__ == "__main__":
    main()
