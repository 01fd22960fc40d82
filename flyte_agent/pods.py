"""A cluster fleet's servers as pods: which pod serves each ordinal, for log links and the operator's view.

A GraphDataService's StatefulSet names its pods `<statefulset>-<ordinal>` (Kubernetes' StatefulSet
pod identity), in the connector's fleet namespace, container `graph-engine`; all three come from the
same functions the Pulumi component uses (`infra.names`, `infra.graph_service`), so they cannot drift.
The pods' own states (ready, restarts, OOMKilled) are not read here: the servers are reported with
phase UNKNOWN unless a reader of pod statuses is given (`reader`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flyte_agent.provisioner import ServerPhase, ServerState
from infra import names
from infra.graph_service import CONTAINER_NAME

# (pod name) -> (phase, restarts, last termination reason, start epoch seconds), or None if not found.
PodReader = Callable[[str, str], tuple[ServerPhase, int, str, float] | None]


def pod_name(fleet: str, ordinal: int) -> str:
    return f"{names.statefulset_name(fleet)}-{ordinal}"


def cluster_servers(fleet: str, namespace: str, replicas: int, endpoints: Sequence[str],
                    reader: PodReader | None = None) -> list[ServerState]:
    servers = []
    for ordinal in range(replicas):
        pod = pod_name(fleet, ordinal)
        seen = reader(namespace, pod) if reader is not None else None
        phase, restarts, reason, started = seen or (ServerPhase.UNKNOWN, 0, "", 0.0)
        servers.append(ServerState(
            ordinal=ordinal, endpoint=endpoints[ordinal] if ordinal < len(endpoints) else "",
            phase=phase, restarts=restarts, reason=reason, started_at=started, pod=pod, namespace=namespace,
            container=CONTAINER_NAME))
    return servers
