"""A cluster fleet's servers from its pods (Kubernetes' own V1Pod model), and GetTask's progress from them."""

from __future__ import annotations

from typing import Any

from kubernetes.client import V1ObjectMeta, V1Pod, V1PodStatus

from flyte_agent import pods
from flyte_agent.provisioner import Phase, ServerPhase, Status
from tests.pod_models import STARTED, container


def pod(name: str, ready: bool = False, restarts: int = 0, waiting: str | None = None,
        last: tuple[str, int] | None = None) -> V1Pod:
    status = container(waiting, restarts=restarts, last=last, ready=ready)
    return V1Pod(metadata=V1ObjectMeta(name=name), status=V1PodStatus(container_statuses=[status]))


def test_each_pod_says_what_its_server_is_doing() -> None:
    def state(p: V1Pod | None) -> tuple[ServerPhase, int, str]:
        s = pods.server_state(0, "e:1", p, "graph-services", "gf-x")
        return s.phase, s.restarts, s.reason

    assert state(None) == (ServerPhase.PENDING, 0, "")
    assert state(pod("gf-x-0")) == (ServerPhase.LOADING, 0, "")
    assert state(pod("gf-x-0", ready=True)) == (ServerPhase.SERVING, 0, "")
    assert state(pod("gf-x-0", restarts=3, waiting="CrashLoopBackOff", last=("OOMKilled", 137))) == (
        ServerPhase.RESTARTING, 3, "OOMKilled")
    assert state(pod("gf-x-0", restarts=1, last=("Error", 1))) == (
        ServerPhase.RESTARTING, 1, "Error (exit code 1)")
    assert state(pod("gf-x-0", waiting="ImagePullBackOff")) == (ServerPhase.PENDING, 0, "ImagePullBackOff")
    served = pods.server_state(0, "e:1", pod("gf-x-0", ready=True), "graph-services", "gf-x")
    assert (served.pod, served.container) == ("gf-x-0", "graph-engine")
    assert served.started_at == STARTED.timestamp()


def test_pulumi_progress_and_failures_name_the_pods() -> None:
    found = {"gf-x-0": pod("gf-x-0", ready=True), "gf-x-1": pod("gf-x-1"), "gf-x-2": pod("gf-x-2"),
             "gf-x-3": pod("gf-x-3", restarts=2, waiting="CrashLoopBackOff", last=("OOMKilled", 137))}

    def tail(server: Any) -> str:
        return f"MemoryError while loading partition 3 ({server.pod})"

    def with_servers(status: Status) -> Status:
        return pods.with_servers(status, "gf-x", "graph-services", 4, found, tail)

    coming = with_servers(Status(Phase.UPDATING, message="pulumi up running for stack gf-x"))
    assert coming.message == ("1/4 servers serving, 2 loading partitions, 1 restarting: OOMKilled "
                              "(pulumi up running for stack gf-x)")
    assert [s.phase for s in coming.servers] == [
        ServerPhase.SERVING, ServerPhase.LOADING, ServerPhase.LOADING, ServerPhase.RESTARTING]
    failed = with_servers(Status(Phase.FAILED, message="pulumi up failed 3 times"))
    assert failed.message.splitlines()[1:] == [
        "graph-engine server 3 (pod graph-services/gf-x-3) restarted 2 times, last: OOMKilled; last lines "
        "of its previous log:", "MemoryError while loading partition 3 (gf-x-3)"]
