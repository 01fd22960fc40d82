"""Container statuses as the kubelet reports them, in Kubernetes' own V1 models (tests of pods.py and
pod_failures.py build their pods from these)."""

from __future__ import annotations

import datetime as dt

from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
)

STARTED = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def container(waiting: str | None = None, message: str | None = None, restarts: int = 0,
              last: tuple[str, int] | None = None, name: str = "graph-engine",
              ready: bool = False) -> V1ContainerStatus:
    """Running since STARTED, or waiting with `waiting` (and the kubelet's `message`); `last`: the
    previous container's (termination reason, exit code)."""
    state = (V1ContainerState(waiting=V1ContainerStateWaiting(reason=waiting, message=message)) if waiting
             else V1ContainerState(running=V1ContainerStateRunning(started_at=STARTED)))
    last_state = (V1ContainerState(terminated=V1ContainerStateTerminated(reason=last[0], exit_code=last[1]))
                  if last else V1ContainerState())
    return V1ContainerStatus(name=name, ready=ready, restart_count=restarts, state=state,
                             last_state=last_state, image="i", image_id="", started=not waiting)
