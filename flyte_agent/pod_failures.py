"""A fleet that cannot start, told from its pods within minutes instead of after every `up` timed out.

pulumi-kubernetes waits for the StatefulSet (`startup_seconds` + 600 s, three attempts), but some
pod states never resolve by waiting; the kubelet and the scheduler name them in the pod's status
(k8s.io/api v0.33.13 core/v1/types.go; kubelet v1.33.13 reasons):

- a container waiting with reason `ErrImagePull`, `ImagePullBackOff`, `InvalidImageName` or
  `ErrImageNeverPull` (pkg/kubelet/images/types.go): the image cannot be had;
- `CreateContainerConfigError` (pkg/kubelet/kuberuntime/kuberuntime_container.go): e.g. a missing
  Secret or key the container references;
- `CrashLoopBackOff` (pkg/kubelet/container/sync_result.go) once the container has restarted
  `crash_loop_restarts` times: the server exits every time it starts;
- condition `PodScheduled` False with reason `Unschedulable` (core/v1 `PodReasonUnschedulable`) for
  longer than a grace period (`unschedulable_seconds`), with the scheduler's message ("0/3 nodes are
  available: 3 Insufficient memory"). A grace, because a node autoscaler (Karpenter) reacts to exactly
  this condition;
- no pod at all when the API refuses the StatefulSet's pods (a ResourceQuota, an admission webhook):
  the controller's FailedCreate events on the StatefulSet say why (`create_failure`), after the same
  grace, since quota may free up.

Both thresholds are connector settings (GRAPHFLEET_CRASH_LOOP_RESTARTS, GRAPHFLEET_UNSCHEDULABLE_SECONDS;
the stack's `connector.podFailures`); their defaults are here. Plain functions over
`kubernetes.client.V1Pod` objects, so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flyte_agent.pods import termination

IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError"})
CRASH_LOOP = "CrashLoopBackOff"
# Defaults of the settings. The kubelet's back-off doubles from 10 s: two restarts are seen within a
# minute of the first crash.
CRASH_LOOP_RESTARTS = 2
# How long a pod may wait for a node before the fleet fails: time for a node autoscaler to add one.
UNSCHEDULABLE_SECONDS = 300.0


def fleet_failure(pods: Mapping[str, Any], now: float, unschedulable_seconds: float,
                  crash_loop_restarts: int) -> str | None:
    """Why the fleet cannot start, naming the pod and the Kubernetes reason; None if nothing says so."""
    for name in sorted(pods):
        why = pod_failure(pods[name], now, unschedulable_seconds, crash_loop_restarts)
        if why is not None:
            pod = pods[name]
            namespace = pod.metadata.namespace if pod.metadata is not None else None
            return f"pod {namespace + '/' if namespace else ''}{name}: {why}"
    return None


def pod_failure(pod: Any, now: float, unschedulable_seconds: float, crash_loop_restarts: int) -> str | None:
    """One pod's deterministic failure, or None."""
    status = pod.status
    if status is None:
        return None
    for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        waiting = container.state.waiting if container.state is not None else None
        reason = str(waiting.reason or "") if waiting is not None else ""
        detail = f": {waiting.message}" if waiting is not None and waiting.message else ""
        if reason in IMAGE_REASONS or reason in CONFIG_REASONS:
            return f"container {container.name} {reason}{detail}"
        restarts = int(container.restart_count or 0)
        if reason == CRASH_LOOP and restarts >= crash_loop_restarts:
            last = container.last_state.terminated if container.last_state is not None else None
            exited = f", last exit: {termination(last)}" if last is not None else ""
            return f"container {container.name} {CRASH_LOOP} after {restarts} restarts{exited}"
    for condition in status.conditions or []:
        if (condition.type, condition.status, condition.reason) == ("PodScheduled", "False", "Unschedulable"):
            since = condition.last_transition_time.timestamp() if condition.last_transition_time else now
            if now - since >= unschedulable_seconds:
                return f"Unschedulable for {now - since:.0f}s: {condition.message or 'no message'}"
    return None


def create_failure(events: list[Any], pods_found: int, replicas: int, now: float,
                   grace_seconds: float) -> str | None:
    """The StatefulSet cannot create its pods (`events`: its FailedCreate events, pods.KubernetesPods
    .create_failures) — a ResourceQuota, an admission webhook or a policy refuses them, so no pod
    exists for `fleet_failure` to read: once it has kept failing for `grace_seconds`
    (quota may free up) with pods still missing, the newest refusal in the controller's words."""
    if pods_found >= replicas or not events:
        return None
    first = min(_event_time(e, first=True) or now for e in events)
    newest = max(events, key=lambda e: _event_time(e, first=False) or 0.0)
    if now - first < grace_seconds:
        return None
    times = sum(int(e.count or 1) for e in events)
    return f"{newest.message} ({times} time(s) in {now - first:.0f}s)"


def _event_time(event: Any, first: bool) -> float | None:
    """When a (core/v1, possibly aggregated) event was first or last seen; the legacy recorder fills
    first/lastTimestamp, the events.k8s.io one eventTime."""
    stamp = (event.first_timestamp if first else event.last_timestamp) or event.event_time
    if stamp is None and event.metadata is not None:
        stamp = event.metadata.creation_timestamp
    return stamp.timestamp() if stamp is not None else None
