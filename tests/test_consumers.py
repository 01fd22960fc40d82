"""What gc asks before it stops a lapsed fleet: does a holding execution still run?"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from flyte_agent import connector
from flyte_agent.consumers import KubernetesConsumers, LocalConsumers, local_run


def test_a_local_run_is_its_process_identified_by_pid_and_start_time() -> None:
    probe = LocalConsumers()
    assert probe.running(f"local/local/{connector.LOCAL_RUN}")  # this process: alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    name = local_run(child.pid)
    child.wait(timeout=60)
    assert not probe.running(f"local/local/{name}")  # exited (and reaped)
    # The same pid with another start time is another process (pid reuse).
    pid, start, tail = connector.LOCAL_RUN.split("-")
    assert not probe.running(f"local/local/{pid}-t{int(start[1:]) + 1}-{tail}")
    # An execution of a served connector has no process to look at: never renewed.
    assert not probe.running("proj/dev/f3a9c1") and not probe.running("local/local/other")
    assert connector.LOCAL_RUN.startswith(f"pid{os.getpid()}-t")


class FakeCore:
    def __init__(self, items: list[Any] | Exception) -> None:
        self.items = items
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        self.calls.append((namespace, kwargs))
        if isinstance(self.items, Exception):
            raise self.items
        return SimpleNamespace(items=self.items)


def probe(core: FakeCore, template: str = "{project}-{domain}") -> KubernetesConsumers:
    consumers = KubernetesConsumers.__new__(KubernetesConsumers)
    consumers._core = core
    consumers._namespace = template
    return consumers


def test_an_execution_runs_while_a_pod_with_its_flyte_labels_is_not_finished() -> None:
    core = FakeCore([object()])
    assert probe(core).running("proj/dev/f3a9c1")
    [(namespace, asked)] = core.calls
    assert namespace == "proj-dev"
    assert asked["label_selector"] == "execution-id=f3a9c1,project=proj,domain=dev"
    assert asked["field_selector"] == "status.phase!=Succeeded,status.phase!=Failed"
    assert asked["limit"] == 1 and asked["_request_timeout"] <= 2.0  # bounded: gc must not hang

    assert not probe(FakeCore([])).running("proj/dev/f3a9c1")
    assert not probe(FakeCore(PermissionError("pods is forbidden"))).running("proj/dev/f3a9c1")  # unknown
    core = FakeCore([object()])
    assert not probe(core).running("proj/dev") and core.calls == []  # not an execution: nothing asked
    core = FakeCore([object()])
    assert probe(core, "flyte-{project}").running("proj/dev/x") and core.calls[0][0] == "flyte-proj"
