"""Connector latency over gRPC, as FlytePropeller sees it.

1. CreateTask / GetTask latency (p50, p90, p99, max; at least --min-samples executions per level, and a
   percentile only where its samples suffice) with 1, 16, 64 concurrent executions. The tasks `reuse`
   a shared service (one local fleet named in GRAPHFLEET_SHARED_SERVICES), so the numbers are the
   connector path itself (decode, validate, health-check, encode), not 64 graph loads on 2 cores.
2. CreateTask -> SUCCEEDED for a fresh local fleet of 1, 2 and 4 servers on Cora, next to loading
   the same graph in-process.

`--backend pulumi` instead runs the Pulumi provisioner through the Automation API seam: every
execution is a fresh fleet (one ephemeral stack each), the CLI is the fake from tests/fake_pulumi.py
over a file:// state backend (its `up` runs the real inline program), the graph sits in moto's S3. It
times CreateTask, the first GetTask, DeleteTask and CreateTask -> SUCCEEDED (polling every second)
at each concurrency: the connector's own cost per Pulumi call, not Kubernetes' (endpoints are not
health-checked: nothing serves them). It also reports the CPU seconds spent in the connector process
and in the CLI processes it started, and one fake CLI call's latency: the fake is a Python process
per call, far heavier than the Go CLI, and its cost must not be mistaken for ours.

    .venv/bin/python -m bench.connector_latency [--backend local|pulumi] [--concurrency 1,16,64] \
        [--fleets 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
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
from graph_engine import health
from graph_engine.convert import convert
from graph_engine.datasets import load_planetoid
from infra.contract import DATA_SERVICE_TASK_TYPE
from tests.shared_data import PLANETOID_DIR as PLANETOID

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
        [sys.executable, "-m", "tests.loopback_connector", str(port), str(free_port())],
        env={**os.environ, **env, "GRAPHFLEET_BACKEND": backend, "GRAPHFLEET_STATE_DIR": state_dir},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).resolve().parents[1])
    endpoint = f"127.0.0.1:{port}"
    health.wait_ready([endpoint], timeout=90)
    return proc, endpoint


# A percentile is named only with enough samples behind it (docs/GUIDE: "call a percentile p99 only
# with enough samples, else say max"): p90 from 10, p99 from 100. The max is always reported.
_PERCENTILE_MIN_SAMPLES = {90: 10, 99: 100}


def summary(values: list[float], prefix: str) -> dict[str, float]:
    """`<prefix>_n`, `_p50`, `_p90`/`_p99` where there are enough samples, and `_max`."""
    out: dict[str, float] = {f"{prefix}_n": len(values), f"{prefix}_p50": statistics.median(values)}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else []
    for q, needed in _PERCENTILE_MIN_SAMPLES.items():
        if len(values) >= needed:
            out[f"{prefix}_p{q}"] = cuts[q - 1]
    out[f"{prefix}_max"] = max(values)
    return out


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
    return {**summary(creates, "create_ms"), **summary(gets, "get_ms")}


def until_succeeded(get_task: Callable[[Any], Any], meta: bytes, t0: float, poll: float,
                    limit: float) -> tuple[float, float]:
    """Poll GetTask until SUCCEEDED: (the first call's latency, seconds from `t0` to SUCCEEDED)."""
    first = None
    while True:
        t1 = time.perf_counter()
        resource = get_task(agent_pb2.GetTaskRequest(task_category=CATEGORY, resource_meta=meta)).resource
        first = time.perf_counter() - t1 if first is None else first
        if resource.phase == execution_pb2.TaskExecution.SUCCEEDED:
            return first, time.perf_counter() - t0
        if resource.phase == execution_pb2.TaskExecution.FAILED or time.perf_counter() - t0 > limit:
            raise RuntimeError(resource.message or f"not ready after {limit:g} s")
        time.sleep(poll)


def time_to_ready(stub: AsyncAgentServiceStub, uri: str, replicas: int) -> float:
    task = DataServiceTask(name="bench_graph", config={"replicas": 1})
    template, inputs = template_and_inputs(task, graph_uri=uri, replicas=replicas)
    t0 = time.perf_counter()
    meta = stub.CreateTask(agent_pb2.CreateTaskRequest(
        template=template, inputs=inputs, output_prefix="/tmp/unused",
        task_execution_metadata=metadata(f"ready{replicas}")), timeout=10).resource_meta
    _, elapsed = until_succeeded(lambda request: stub.GetTask(request, timeout=10), meta, t0, 0.05, 300)
    stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_category=CATEGORY, resource_meta=meta), timeout=30)
    return elapsed


class Retrying:
    """Calls as propeller makes them: one that misses its 10 s deadline is retried (the call is
    idempotent), so is a DeleteTask answered "in progress"; misses are counted, not fatal."""

    def __init__(self) -> None:
        self.misses = 0

    def __call__(self, method: Any, request: Any) -> Any:
        while True:
            try:
                return method(request, timeout=10)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.misses += 1
                elif not any(text in str(err.details()) for text in ("in progress", "still running")):
                    raise
                time.sleep(1.0)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of process `pid` itself and of its reaped children (here: the CLI processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) / os.sysconf("SC_CLK_TCK") for f in fields[11:15])
    return utime + stime, cutime + cstime


def cli_call_seconds(cli: Path, backend_url: str) -> float:
    """Median wall time of one fake CLI call on an idle connector: what each call costs before ours."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([str(cli), "stack", "ls", "--json"], check=True, capture_output=True, timeout=60,
                       env={**os.environ, "PULUMI_BACKEND_URL": backend_url})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pulumi_fleet_latency(stub: AsyncAgentServiceStub, template: Any, inputs: Any,
                         concurrency: int, run: str, connector_pid: int) -> dict[str, float]:
    """`concurrency` fresh fleets at once: create, get until SUCCEEDED, delete until deleted; and the
    CPU seconds this took in the connector process and in the CLI processes it started."""
    def one(i: int) -> tuple[float, float, float, float, int]:
        call = Retrying()
        t0 = time.perf_counter()
        meta = call(stub.CreateTask, agent_pb2.CreateTaskRequest(
            template=template, inputs=inputs, output_prefix="/tmp/unused",
            task_execution_metadata=metadata(f"{run}{concurrency}x{i}"))).resource_meta
        created = time.perf_counter() - t0
        first_get, ready = until_succeeded(lambda request: call(stub.GetTask, request), meta, t0, 1.0, 900)
        t2 = time.perf_counter()
        call(stub.DeleteTask, agent_pb2.DeleteTaskRequest(task_category=CATEGORY, resource_meta=meta))
        return created, first_get, ready, time.perf_counter() - t2, call.misses

    cpu_before = cpu_seconds(connector_pid)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(concurrency)))
    wall = time.perf_counter() - t0
    own, clis = (after - before for after, before in zip(cpu_seconds(connector_pid), cpu_before, strict=True))
    creates, gets, readies, deletes = ([r[k] * 1000 for r in results] for k in range(4))
    return {**summary(creates, "create_ms"), **summary(gets, "first_get_ms"),
            "ready_p50_s": statistics.median(readies) / 1000, "ready_max_s": max(readies) / 1000,
            **summary(deletes, "deleted_ms"),
            "deadline_misses": sum(r[4] for r in results), "wall_s": wall,
            "connector_cpu_s": own, "cli_cpu_s": clis}


def pulumi_main(args: argparse.Namespace, scratch: str) -> dict[str, Any]:
    # Test helpers, used here as the stand-ins for a cluster's S3 and the pulumi CLI.
    from tests import fake_pulumi
    from tests.s3_server import moto_s3, s3_env

    with moto_s3(buckets=["graphs"], set_env=True) as endpoint:
        uri = convert(load_planetoid("cora", PLANETOID), "s3://graphs/cora", partitions=4)
        cli = fake_pulumi.install(Path(scratch))
        env = {**s3_env(endpoint), "GRAPHFLEET_PULUMI_BACKEND_URL": f"file://{scratch}/backend",
               "GRAPHFLEET_PULUMI_COMMAND": str(cli), "PULUMI_CONFIG_PASSPHRASE": "bench-only",
               "GRAPHFLEET_CHECK_ENDPOINTS": "false", "GRAPHFLEET_GC_INTERVAL_SECONDS": "0"}
        connector, endpoint_ = start_connector("pulumi", f"{scratch}/state", env)
        try:
            with grpc.insecure_channel(endpoint_) as channel:
                stub = AsyncAgentServiceStub(channel)
                task = DataServiceTask(name="bench_fleet", config={"replicas": 1})
                template, inputs = template_and_inputs(task, graph_uri=uri, replicas=2)
                # The first execution makes the S3 client (the provisioner is built when the
                # connector starts): reported apart from the steady state.
                first = pulumi_fleet_latency(stub, template, inputs, 1, "cold", connector.pid)
                return {"backend": "pulumi", "fake_cli_call_s": cli_call_seconds(cli, f"file://{scratch}/backend"),
                        "first_execution": first, "fleets": {
                            concurrency: pulumi_fleet_latency(stub, template, inputs, concurrency, "warm",
                                                              connector.pid)
                            for concurrency in (int(c) for c in args.concurrency.split(","))}}
        finally:
            connector.send_signal(2)
            connector.wait(timeout=60)


def in_process_load_seconds(uri: str) -> float:
    from deepgnn.graph_engine.snark.local import Client

    t0 = time.perf_counter()
    client = Client(uri, partitions=list(range(4)))
    elapsed = time.perf_counter() - t0
    client.reset()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", choices=["local", "pulumi"],
                        help="GRAPHFLEET_BACKEND of the served connector")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3, help="executions per concurrent caller")
    parser.add_argument("--min-samples", type=int, default=_PERCENTILE_MIN_SAMPLES[99],
                        help="at least this many executions per concurrency level (p99 needs 100)")
    parser.add_argument("--fleets", default="1,2,4", help="fleet sizes for time-to-ready")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="graphfleet-bench-") as scratch:
        if args.backend == "pulumi":
            print(json.dumps(pulumi_main(args, scratch), indent=2))
            return
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
                    rounds = max(args.rounds, math.ceil(args.min_samples / concurrency))
                    results["latency"][concurrency] = concurrent_latency(stub, reuse, concurrency, rounds)
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
