"""Chaos: fleets through 2 connector replicas while replicas and pulumi CLIs are killed.

Two `pyflyte serve connector` replicas (real gRPC, each on its own hostname through a UTS namespace, as
two pods) share one self-managed Pulumi state backend (`file://`) driven through the fake CLI
(tests/fake_pulumi.py: real lock files, its `up` runs the real inline program). Each execution is a
propeller stand-in that sends every call to a random live replica (a Service in front of the pods):
`keep` (create, GetTask until SUCCEEDED, keep it to the end), `release` (then DeleteTask), `abort`
(DeleteTask at a random moment while it comes up). Meanwhile a chaos thread, at random intervals,
SIGKILLs a replica (the pod dies with its CLIs; it is restarted a second later), SIGTERMs one (drain,
then restart), or SIGKILLs / SIGTERMs one running CLI process.

At the end, with both replicas up, every kept fleet must still be there and SUCCEEDED (no wrong
deletion), every execution's final phase must be what its caller did, and after the kept fleets are
deleted no stack holds resources and no object is left in the (fake) cluster (no leak). Recovery time
is from a replica's SIGKILL to the moment no lock file it held is left.

    nice -n 10 .venv/bin/python -m bench.chaos [--fleets 32] [--seed 1] [--every 2,6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from flyteidl.admin import agent_pb2
from flyteidl.core import execution_pb2
from flyteidl.service.agent_pb2_grpc import AsyncAgentServiceStub

from bench.connector_latency import CATEGORY, free_port, metadata, template_and_inputs
from flyte_agent import DataServiceTask, stack_record
from flyte_agent.task_request import provision_name
from graph_engine import health
from graph_engine.convert import convert
from tests import fake_pulumi
from tests.hostnames import under_hostname
from tests.s3_server import moto_s3, s3_env
from tests.test_graph_server import ring_graph

ROOT = Path(__file__).resolve().parents[1]
SUCCEEDED, FAILED = execution_pb2.TaskExecution.SUCCEEDED, execution_pb2.TaskExecution.FAILED
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


@dataclass
class Replica:
    """One connector pod: a process on its own hostname and a fixed port (the Service's target)."""

    hostname: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    crashes: int = 0  # exits before serving, each followed by a restart
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, limit: float = 120) -> None:
        """Start the container and wait until it serves. A container that exits before (its start-up
        `pulumi version` was killed by the chaos, say) is started again, as the kubelet restarts it."""
        deadline = time.monotonic() + limit
        while True:
            argv = [sys.executable, "-m", "tests.loopback_connector", str(self.port), str(self.metrics_port)]
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(under_hostname(self.hostname, argv), start_new_session=True,
                                             cwd=ROOT, env={**os.environ, **self.env}, stdout=out, stderr=out)
            while self.proc.poll() is None and time.monotonic() < deadline:
                if health.check(self.endpoint, timeout=1.0):
                    return
                time.sleep(0.2)
            if self.proc.poll() is None or time.monotonic() >= deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"replica {self.hostname} did not serve within {limit:g}s; its log ends:\n"
                                   f"{tail}")
            self.crashes += 1
            time.sleep(1.0)

    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigkill(self) -> None:
        """The pod dies: the connector and every CLI it started, no clean-up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def sigterm(self) -> None:
        """The kubelet stops the pod: SIGTERM to the connector (it drains), SIGKILL after the grace."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=60)


class Caller:
    """Propeller's side: each call to a random live replica. A refused or timed-out call is retried
    (every call is idempotent), as is a DeleteTask answered "in progress" or failing (propeller keeps
    retrying an abort); a GetTask error counts as a sync failure, and 5 in a row fail the task
    (flyteplugins' webapi plugin, see issue 8 item 4); a CreateTask error fails it at once."""

    def __init__(self, replicas: list[Replica], rng: random.Random) -> None:
        self.replicas = replicas
        self.rng = rng
        self.stubs = {r.hostname: AsyncAgentServiceStub(grpc.insecure_channel(r.endpoint)) for r in replicas}
        self.retries = 0
        self.errors: Counter[str] = Counter()  # error answers (not refusals) by method

    def __call__(self, method: str, request: Any, limit: float = 300) -> Any:
        deadline, failures = time.monotonic() + limit, 0
        while True:
            replica = self.rng.choice(self.replicas)
            try:
                return getattr(self.stubs[replica.hostname], method)(request, timeout=10)
            except grpc.RpcError as err:
                refused = err.code() in _RETRYABLE or any(
                    text in str(err.details()) for text in ("in progress", "still running", "locked"))
                if not refused:
                    self.errors[method] += 1
                    failures += 1
                    if method == "CreateTask" or (method == "GetTask" and failures >= 5):
                        raise
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.5)


@dataclass
class Execution:
    index: int
    plan: str                 # keep | release | abort
    name: str = ""            # the fleet's name (from the ResourceMeta)
    meta: bytes = b""
    phase: str = "none"       # what the caller saw last: succeeded | failed | deleted | error
    message: str = ""


def drive(execution: Execution, call: Caller, template: Any, inputs: Any, rng: random.Random,
          ready_limit: float) -> None:
    try:
        execution.meta = call("CreateTask", agent_pb2.CreateTaskRequest(
            template=template, inputs=inputs, output_prefix="/tmp/unused",
            task_execution_metadata=metadata(f"chaos{execution.index}"))).resource_meta
        execution.name = json.loads(execution.meta)["name"]
        if execution.plan == "abort":
            time.sleep(rng.uniform(0, 3))
            delete(execution, call)
            return
        t0 = time.monotonic()
        while True:
            resource = get(execution, call)
            if resource.phase in (SUCCEEDED, FAILED):
                execution.phase = "succeeded" if resource.phase == SUCCEEDED else "failed"
                execution.message = resource.message[:400]
                break
            if time.monotonic() - t0 > ready_limit:
                execution.phase, execution.message = "error", f"not terminal after {ready_limit:g}s"
                return
            time.sleep(1.0)
        if execution.plan == "release" and execution.phase == "succeeded":
            delete(execution, call)
    except Exception as err:  # noqa: BLE001 - an execution's failure is a result to report
        details = err.details() if isinstance(err, grpc.RpcError) else str(err)
        execution.phase, execution.message = "error", f"{type(err).__name__}: {details}"[-400:]


def get(execution: Execution, call: Caller) -> Any:
    return call("GetTask", agent_pb2.GetTaskRequest(task_category=CATEGORY,
                                                    resource_meta=execution.meta)).resource


def delete(execution: Execution, call: Caller) -> None:
    call("DeleteTask", agent_pb2.DeleteTaskRequest(task_category=CATEGORY, resource_meta=execution.meta))
    execution.phase = "deleted"


KINDS = ("replica-sigkill", "replica-sigterm", "cli-sigkill", "cli-sigterm")


@dataclass
class Chaos:
    """Kills at random intervals until stopped; what it did and how long locks took to recover. The
    kinds come in rounds, each kind once a round in random order, so even a short run meets all four;
    a kind drawn when it cannot be done (no CLI running, both replicas restarting) stays in its round."""

    replicas: list[Replica]
    backend_url: str
    every: tuple[float, float]
    rng: random.Random
    actions: Counter[str] = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)
    unrecovered: int = 0
    restart_failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        pending: list[tuple[str, float]] = []  # (hostname, killed at): its lock files must go
        checker = threading.Thread(target=self._watch_locks, args=(pending,), daemon=True)
        checker.start()
        restarts: list[threading.Thread] = []
        round_: list[str] = []
        while not self.stop.wait(self.rng.uniform(*self.every)):
            round_ = round_ or list(KINDS)
            action = self.rng.choice(round_)
            if self._act(action, pending, restarts):
                round_.remove(action)
                self.actions[action] += 1
        for restart in restarts:
            restart.join(timeout=300)
        checker.join(timeout=130)
        self.unrecovered = len(pending)

    def _act(self, action: str, pending: list[tuple[str, float]], restarts: list[threading.Thread]) -> bool:
        """Do `action` if it can be done now."""
        if action.startswith("cli"):
            pids = running_clis(self.backend_url)
            if not pids:
                return False
            try:
                os.kill(self.rng.choice(pids), signal.SIGKILL if action == "cli-sigkill" else signal.SIGTERM)
            except ProcessLookupError:
                return False
            return True
        # A replica that is not being killed or restarted already; it comes back in the background (a
        # pod's restart), so the chaos goes on meanwhile.
        for replica in self.rng.sample(self.replicas, len(self.replicas)):
            if replica.lock.acquire(blocking=False):
                restart = threading.Thread(target=self._kill_and_restart, args=(replica, action, pending))
                restart.start()
                restarts.append(restart)
                return True
        return False

    def _kill_and_restart(self, replica: Replica, action: str, pending: list[tuple[str, float]]) -> None:
        try:
            if action == "replica-sigkill":
                held = any(lock["hostname"] == replica.hostname for lock in all_locks(self.backend_url))
                replica.sigkill()
                if held:  # its locks must be recovered by the other replica or its successor
                    pending.append((replica.hostname, time.time()))
            else:
                replica.sigterm()
            time.sleep(1.0)
            replica.start()
        except Exception as err:  # noqa: BLE001 - reported: the end state is judged with both replicas up
            self.restart_failures.append(f"{replica.hostname} after {action}: {err}"[-2000:])
        finally:
            replica.lock.release()

    def _watch_locks(self, pending: list[tuple[str, float]]) -> None:
        """Until the run ends and the last kill's locks are gone (at most 120 s more)."""
        while True:
            held = all_locks(self.backend_url)
            for hostname, killed_at in list(pending):
                if not any(lock["hostname"] == hostname and _epoch(lock["timestamp"]) < killed_at
                           for lock in held):
                    self.recoveries.append(time.time() - killed_at)
                    pending.remove((hostname, killed_at))
            if self.stop.is_set() and (not pending or time.time() - max(k for _, k in pending) > 120):
                return
            time.sleep(0.2)


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp).timestamp()


def all_locks(backend_url: str) -> list[dict[str, Any]]:
    return [lock for name in fake_pulumi.stacks(backend_url) for lock in fake_pulumi.locks(backend_url, name)]


def running_clis(backend_url: str) -> list[int]:
    """Fake CLI processes working on this state backend (found by its URL in their environment)."""
    wanted = f"PULUMI_BACKEND_URL={backend_url}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cli = b"fake_pulumi" in (proc / "cmdline").read_bytes()
            if cli and wanted in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@contextmanager
def fleet_state_backend(scratch: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """moto's S3 with a small graph, the fake CLI over a file:// state backend, and the replicas' env."""
    with moto_s3(buckets=["graphs"], set_env=True) as endpoint:
        uri = convert(ring_graph(), "s3://graphs/ring", partitions=2)
        cli = fake_pulumi.install(scratch)
        url = f"file://{scratch}/backend"
        env = {**s3_env(endpoint), "GRAPHFLEET_BACKEND": "pulumi", "GRAPHFLEET_PULUMI_BACKEND_URL": url,
               "GRAPHFLEET_PULUMI_COMMAND": str(cli), "PULUMI_CONFIG_PASSPHRASE": "chaos-only",
               "GRAPHFLEET_CHECK_ENDPOINTS": "false", "GRAPHFLEET_GC_INTERVAL_SECONDS": "0",
               "GRAPHFLEET_HEARTBEAT_SECONDS": "1", "GRAPHFLEET_STATE_DIR": str(scratch / "state")}
        yield url, env, uri


def run(fleets: int, seed: int, every: tuple[float, float], scratch: Path,
        ready_limit: float = 600) -> dict[str, Any]:
    with fleet_state_backend(scratch) as (url, env, uri):
        replicas = [Replica(f"replica-{i}", env, scratch / f"replica-{i}.log") for i in range(2)]
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(Replica.start, replicas))  # raises with the replica's log if one did not start
        chaos = Chaos(replicas, url, every, random.Random(seed + 1))
        try:
            task = DataServiceTask(name="chaos_fleet", config={"replicas": 1})
            template, inputs = template_and_inputs(task, graph_uri=uri, replicas=1)
            plans = ["keep", "release", "abort"]
            executions = [Execution(i, plans[i % 3]) for i in range(fleets)]
            slow_operations(url, executions, random.Random(seed + 3))
            call = Caller(replicas, random.Random(seed + 2))
            chaos_thread = threading.Thread(target=chaos.run, daemon=True)
            t0 = time.monotonic()
            chaos_thread.start()
            workers = [threading.Thread(target=drive, args=(e, call, template, inputs,
                                                            random.Random(seed + 10 + e.index), ready_limit))
                       for e in executions]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            chaos.stop.set()
            chaos_thread.join(timeout=300)
            wall = time.monotonic() - t0
            return verdict(executions, call, url, chaos, wall)
        finally:
            with ThreadPoolExecutor(len(replicas)) as pool:
                list(pool.map(Replica.sigterm, [r for r in replicas if r.up()]))


def slow_operations(url: str, executions: list[Execution], rng: random.Random) -> None:
    """Every `up` and `destroy` holds its lock 1-4 s (a StatefulSet becoming ready, pods terminating),
    so kills land in the middle of operations, not between them."""
    for e in executions:
        stack = stack_record.stack_name(provision_name("bench", "dev", f"chaos{e.index}", "n0"))
        fake_pulumi.script_faults(url, stack, up=[f"sleep:{rng.uniform(1, 4):.1f};ok" for _ in range(5)],
                                  destroy=[f"sleep:{rng.uniform(1, 3):.1f};ok" for _ in range(5)])


def verdict(executions: list[Execution], call: Caller, url: str, chaos: Chaos, wall: float) -> dict[str, Any]:
    """The end state, with both replicas up: kept fleets intact, then every fleet gone."""
    down = [r.hostname for r in chaos.replicas if not r.up()]
    outcomes = Counter(f"{e.plan}:{e.phase}" for e in executions)
    wrong_deletions, wrong_phases = [], []
    for e in executions:
        expected = {"keep": "succeeded", "release": "deleted", "abort": "deleted"}[e.plan]
        if e.phase != expected:
            wrong_phases.append(f"{e.name or e.index} ({e.plan}): {e.phase} {e.message}")
    stacks_with_objects = {record["stack"] for record in fake_pulumi.cluster(url).values()}
    for e in executions:
        if e.plan == "keep" and e.phase == "succeeded":
            resource = get(e, call)
            if resource.phase != SUCCEEDED or stack_record.stack_name(e.name) not in stacks_with_objects:
                wrong_deletions.append(f"{e.name}: {resource.phase} {resource.message}")
            delete(e, call)
    # Owned or not, nothing may be left: a fleet's objects, or a stack still holding resources.
    deadline = time.monotonic() + 120
    while True:
        leaked_objects = fake_pulumi.cluster(url)
        leaked_stacks = [name for name, stack in fake_pulumi.stacks(url).items() if stack["resources"]]
        if not (leaked_objects or leaked_stacks) or time.monotonic() > deadline:
            break
        time.sleep(1)
    recoveries = sorted(chaos.recoveries)
    return {
        "fleets": len(executions), "plans": dict(Counter(e.plan for e in executions)),
        "outcomes": dict(outcomes),
        "kills": dict(chaos.actions), "caller_retries": call.retries, "error_answers": dict(call.errors),
        "wall_s": round(wall, 1),
        "lock_recovery_s": {"n": len(recoveries), "median": round(statistics.median(recoveries), 1),
                            "max": round(recoveries[-1], 1)} if recoveries else {"n": 0},
        "locks_never_recovered": chaos.unrecovered,
        "startup_crashes": sum(r.crashes for r in chaos.replicas),
        "replicas_down": down, "restart_failures": chaos.restart_failures,
        "leaked_stacks": sorted(leaked_stacks), "leaked_objects": sorted(leaked_objects),
        "wrong_deletions": wrong_deletions, "wrong_phases": wrong_phases,
    }


# What must be empty (or 0) at the end of a run.
FAILURES = ("leaked_stacks", "leaked_objects", "wrong_deletions", "wrong_phases", "locks_never_recovered",
            "replicas_down", "restart_failures")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", default="2,6", help="seconds between chaos actions: min,max")
    args = parser.parse_args()
    low, high = (float(x) for x in args.every.split(","))
    with tempfile.TemporaryDirectory(prefix="graphfleet-chaos-") as scratch:
        report = run(args.fleets, args.seed, (low, high), Path(scratch))
    print(json.dumps(report, indent=2))
    return 1 if any(report[k] for k in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
