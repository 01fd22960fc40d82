"""A fleet that cannot start, told from its pods within minutes instead of after every `up` timed out.

pulumi-kubernetes waits for the StatefulSet (`startup_seconds` + 600 s, three attempts), but some
pod states never resolve by waiting; the kubelet and the scheduler name them in the pod's status
(k8s.io/api v0.33.13 core/v1/types.go; kubelet v1.33.13 reasons):

- a container waiting with reason `ErrImagePull`, `ImagePullBackOff`, `InvalidImageName` or
  `ErrImageNeverPull` (pkg/kubelet/images/types.go): the image cannot be had;
- `CreateContainerConfigError` (pkg/kubelet/kuberuntime/kuberuntime_container.go): e.g. a missing
  Secret or key the container references;
- `CrashLoopBackOff` (pkg/kubelet/container/sync_result.go) once the container has restarted
  `CRASH_LOOP_RESTARTS` times: the server exits every time it starts;
- condition `PodScheduled` False with reason `Unschedulable` (core/v1 `PodReasonUnschedulable`) for
  longer than a grace period, with the scheduler's message ("0/3 nodes are available: 3 Insufficient
  memory"). A grace, because a node autoscaler (Karpenter) reacts to exactly this condition.

Plain functions over `kubernetes.client.V1Pod` objects, so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flyte_agent.pods import termination

IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError"})
CRASH_LOOP = "CrashLoopBackOff"
# The kubelet's back-off doubles from 10 s: two restarts are seen within a minute of the first crash.
CRASH_LOOP_RESTARTS = 2
# How long a pod may wait for a node before the fleet fails: time for a node autoscaler to add one.
UNSCHEDULABLE_SECONDS = 300.0


def fleet_failure(pods: Mapping[str, Any], now: float, unschedulable_seconds: float) -> str | None:
    """Why the fleet cannot start, naming the pod and the Kubernetes reason; None if nothing says so."""
    for name in sorted(pods):
        why = pod_failure(pods[name], now, unschedulable_seconds)
        if why is not None:
            pod = pods[name]
            namespace = pod.metadata.namespace if pod.metadata is not None else None
            return f"pod {namespace + '/' if namespace else ''}{name}: {why}"
    return None


def pod_failure(pod: Any, now: float, unschedulable_seconds: float) -> str | None:
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
        if reason == CRASH_LOOP and restarts >= CRASH_LOOP_RESTARTS:
            last = container.last_state.terminated if container.last_state is not None else None
            exited = f", last exit: {termination(last)}" if last is not None else ""
            return f"container {container.name} {CRASH_LOOP} after {restarts} restarts{exited}"
    for condition in status.conditions or []:
        if (condition.type, condition.status, condition.reason) == ("PodScheduled", "False", "Unschedulable"):
            since = condition.last_transition_time.timestamp() if condition.last_transition_time else now
            if now - since >= unschedulable_seconds:
                return f"Unschedulable for {now - since:.0f}s: {condition.message or 'no message'}"
    return None
