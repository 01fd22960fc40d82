"""A cluster fleet's servers as pods: which pod serves each ordinal, and what it is doing.

A GraphDataService's StatefulSet names its pods `<statefulset>-<ordinal>` (Kubernetes' StatefulSet
pod identity), in the connector's fleet namespace, container `graph-engine`; all three come from the
same functions the Pulumi component uses (`infra.names`, `infra.graph_service`), so they cannot drift.

`KubernetesPods` reads the fleet's pods (one `list` by the instance label, which the connector's Role
allows) and, for a failure message, the tail of a crashed container's previous log (`pods/log`).
`server_state` turns a pod into a `ServerState` from the fields Kubernetes documents for it
(`status.containerStatuses[].ready`, `.restartCount`, `.state`, `.lastState.terminated.reason`, e.g.
`OOMKilled`). Reading pods never fails a GetTask: without access the servers are UNKNOWN.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from flyte_agent import progress
from flyte_agent.provisioner import Phase, ServerPhase, ServerState, Status
from infra import names
from infra.graph_service import APP_NAME, CONTAINER_NAME

log = logging.getLogger(__name__)

# Bound on each Kubernetes call: a GetTask has 10 s in all.
_REQUEST_SECONDS = 2.0
_LOG_TAIL_LINES = 5


def pod_name(fleet: str, ordinal: int) -> str:
    return f"{names.statefulset_name(fleet)}-{ordinal}"


def server_state(ordinal: int, endpoint: str, pod: Any | None, namespace: str, fleet: str) -> ServerState:
    """One server from its pod (a `kubernetes.client.V1Pod`, or None when it does not exist yet)."""
    base = {"ordinal": ordinal, "endpoint": endpoint, "pod": pod_name(fleet, ordinal), "namespace": namespace,
            "container": CONTAINER_NAME}
    statuses = [] if pod is None or pod.status is None else (pod.status.container_statuses or [])
    status = next((s for s in statuses if s.name == CONTAINER_NAME), None)
    if status is None:
        return ServerState(phase=ServerPhase.PENDING, **base)  # type: ignore[arg-type]
    restarts = int(status.restart_count or 0)
    last = status.last_state.terminated if status.last_state is not None else None
    reason = termination(last) if last is not None else ""
    state = status.state
    started = (state.running.started_at.timestamp()
               if state is not None and state.running is not None and state.running.started_at else 0.0)
    waiting = state.waiting if state is not None else None
    if status.ready:
        phase = ServerPhase.SERVING
    elif waiting is not None and waiting.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                                   "CreateContainerConfigError"):
        phase, reason = ServerPhase.PENDING, str(waiting.reason)  # it never ran: why it cannot start
    elif restarts or (waiting is not None and waiting.reason == "CrashLoopBackOff"):
        phase = ServerPhase.RESTARTING
    else:
        phase = ServerPhase.LOADING
    return ServerState(phase=phase, restarts=restarts, reason=reason, started_at=started,
                       **base)  # type: ignore[arg-type]


def termination(terminated: Any) -> str:
    """`OOMKilled`, `Error (exit code 1)`: the reason Kubernetes gives, with the code when it says little."""
    reason = str(terminated.reason or "")
    code = terminated.exit_code
    if reason == "OOMKilled" or code is None:
        return reason or "terminated"
    return f"{reason} (exit code {code})" if reason else f"exit code {code}"


def cluster_servers(fleet: str, namespace: str, replicas: int, endpoints: Sequence[str],
                    pods: Mapping[str, Any] | None = None) -> list[ServerState]:
    """Every ordinal's server; with `pods` (by name: `KubernetesPods.pods`) their states, else UNKNOWN."""
    servers = []
    for ordinal in range(replicas):
        endpoint = endpoints[ordinal] if ordinal < len(endpoints) else ""
        if pods is None:
            servers.append(ServerState(ordinal=ordinal, endpoint=endpoint, phase=ServerPhase.UNKNOWN,
                                       pod=pod_name(fleet, ordinal), namespace=namespace,
                                       container=CONTAINER_NAME))
        else:
            pod = pods.get(pod_name(fleet, ordinal))
            servers.append(server_state(ordinal, endpoint, pod, namespace, fleet))
    return servers


def api_client(kubeconfig: str | None) -> Any:
    """A Kubernetes ApiClient from the settings' kubeconfig (a path or its contents), else the
    in-cluster account."""
    from kubernetes import client, config

    if kubeconfig is None:
        config.load_incluster_config()
        return client.ApiClient()
    if "\n" in kubeconfig:  # contents, as the settings allow
        import yaml

        return config.new_client_from_config_dict(yaml.safe_load(kubeconfig))
    return config.new_client_from_config(config_file=kubeconfig)


def core_api(kubeconfig: str | None) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client(kubeconfig))


def with_servers(status: Status, fleet: str, namespace: str, replicas: int, found: Mapping[str, Any],
                 log_tail: Callable[[ServerState], str]) -> Status:
    """A cluster fleet's status with its pods' states: progress while it comes up, and for a failure
    the first crashing server and the tail of its previous log (`log_tail`)."""
    servers = cluster_servers(fleet, namespace, replicas, status.endpoints, found)
    message = status.message
    said = progress.summary(servers)
    if status.phase in (Phase.QUEUED, Phase.UPDATING) and said:
        message = f"{said} ({status.message})" if status.message else said
    crashed = next((s for s in servers if s.phase is ServerPhase.RESTARTING), None)
    if status.phase is Phase.FAILED and crashed is not None:
        tail = log_tail(crashed)
        message += (f"\ngraph-engine server {crashed.ordinal} (pod {crashed.namespace}/{crashed.pod}) "
                    f"restarted {crashed.restarts} times, last: {crashed.reason or 'unknown'}"
                    + (f"; last lines of its previous log:\n{tail}" if tail else ""))
    return dataclasses.replace(status, message=message, servers=servers)


# The StatefulSet controller's Warning when the API refuses a pod it creates (k8s v1.33.13
# pkg/controller/statefulset/stateful_pod_control.go `recordPodEvent`: "Failed" + "Create").
FAILED_CREATE = "FailedCreate"


class PodReader(Protocol):
    """What the Pulumi provisioner reads of a fleet's pods: `KubernetesPods` below, or a test's own."""

    def pods(self, namespace: str, fleet: str) -> dict[str, Any] | None: ...

    def create_failures(self, namespace: str, fleet: str) -> list[Any] | None: ...

    def log_tail(self, server: ServerState) -> str: ...


class KubernetesPods:
    """The fleet pods' states and logs through the Kubernetes API (the connector's kubeconfig or its
    in-cluster service account)."""

    def __init__(self, kubeconfig: str | None) -> None:
        self._core = core_api(kubeconfig)

    def pods(self, namespace: str, fleet: str) -> dict[str, Any] | None:
        """The fleet's pods by name; None if they cannot be read (the servers are then UNKNOWN)."""
        selector = f"app.kubernetes.io/name={APP_NAME},app.kubernetes.io/instance={names.object_name(fleet)}"
        try:
            listed = self._core.list_namespaced_pod(namespace, label_selector=selector,
                                                    _request_timeout=_REQUEST_SECONDS)
        except Exception as err:  # noqa: BLE001 - progress is best effort; GetTask must answer
            log.warning("cannot read the pods of fleet %s: %s", fleet, err)
            return None
        return {str(pod.metadata.name): pod for pod in listed.items if pod.metadata is not None}

    def create_failures(self, namespace: str, fleet: str) -> list[Any] | None:
        """The Warning events of the fleet's StatefulSet failing to create a pod (a quota, an admission
        webhook refused it: pod_failures.create_failure); None if they cannot be read."""
        from kubernetes import client

        name = names.object_name(fleet)
        selector = f"involvedObject.kind=StatefulSet,involvedObject.name={name},reason={FAILED_CREATE}"
        try:
            listed = self._core.list_namespaced_event(namespace, field_selector=selector,
                                                      _request_timeout=_REQUEST_SECONDS).items
            if not listed:
                return []
            # Only this StatefulSet's: events outlive a fleet of the same name deleted within the hour.
            made = client.AppsV1Api(self._core.api_client).read_namespaced_stateful_set(
                name, namespace, _request_timeout=_REQUEST_SECONDS)
        except Exception as err:  # noqa: BLE001 - best effort, like the pods: the `up` still times out
            log.warning("cannot read the events of fleet %s: %s", fleet, err)
            return None
        uid = made.metadata.uid if made.metadata is not None else None
        return [e for e in listed if e.involved_object is not None and e.involved_object.uid == uid]

    def log_tail(self, server: ServerState) -> str:
        """The last lines of the server's previous container (the one that crashed), or ''."""
        try:
            text = self._core.read_namespaced_pod_log(
                server.pod, server.namespace, container=server.container, previous=True,
                tail_lines=_LOG_TAIL_LINES, _request_timeout=_REQUEST_SECONDS)
        except Exception as err:  # noqa: BLE001 - the message names the links instead
            log.warning("cannot read the log of %s/%s: %s", server.namespace, server.pod, err)
            return ""
        return str(text).rstrip()
