"""Does a fleet's holder still run, or has it ended? What gc asks of every holding execution.

A fleet (or a lease on a shared one) has a time to live, but a training run may outlast it, and its
code must not change to renew anything; an aborted run, on the other hand, runs no teardown
(propeller calls DeleteTask only for running tasks, and `on_failure` does not run on abort). So gc
follows each holder's workflow execution, level-triggered, on every pass:

- RUNNING: at the fleet's expiry gc renews it (or that holder's lease) by `Settings.renew_seconds`.
- ENDED (aborted, failed, or gone): gc drops the holder's lease now (a fleet of its own: the fleet).
- SUCCEEDED: nothing now; the release task has freed it, else it lapses at its expiry, as a fleet
  handed on by a child launch plan must outlive its execution until then.
- UNKNOWN (cannot be told): nothing; the fleet lapses at its expiry, as without a probe.

Cluster (`FlyteExecutions`): the execution's FlyteWorkflow object, flyte.lyft.com/v1alpha1, named as
the execution, in `{project}-{domain}` (FlyteAdmin's default namespace mapping). FlyteAdmin aborts an
execution by deleting it; propeller's finalizer holds it (deletionTimestamp set) while it aborts the
running nodes, then it is gone; `status.phase` is propeller's WorkflowPhase (sources:
docs/external-contracts.md, section "Flyte"). Gone is ENDED only because CreateTask checked that the
execution's FlyteWorkflow is there (`check_watchable`): a connector outside the executions' cluster
is refused at once instead of releasing every fleet at its first gc.

Local (`LocalExecutions`): a local run is one process (task_request.local_run() names it by pid and start
time): RUNNING while it lives, ENDED once it has exited (a local run cannot be told apart as
succeeded; its fleets serve nobody after it). Executions of a served local connector carry no
process to look at: UNKNOWN.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

_REQUEST_SECONDS = 2.0
# task_request.local_run(): pid<pid>-t<start ticks>-<random>
_LOCAL_RUN = re.compile(r"^local/local/pid(?P<pid>\d+)-t(?P<start>\d+)-[0-9a-f]+$")
# A Kubernetes object name (and label value) Flyte gives executions: anything else is no execution.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# flytepropeller v1.16.4 pkg/apis/flyteworkflow/crd.go and v1alpha1/iface.go (WorkflowPhase, iota).
FLYTEWORKFLOW_GROUP, FLYTEWORKFLOW_VERSION, FLYTEWORKFLOWS = "flyte.lyft.com", "v1alpha1", "flyteworkflows"
_PHASE_SUCCESS, _PHASE_FAILED, _PHASE_ABORTED = 3, 5, 6


def workflow_execution(execution: str) -> str:
    """The workflow execution (`project/domain/name`) of a task execution identity
    (`project/domain/name/node`, `Provision.execution`); "" for anything else, which no release matches."""
    parts = execution.split("/", 3)
    return "/".join(parts[:3]) if len(parts) == 4 and all(parts) else ""


class Execution(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ENDED = "ended"
    UNKNOWN = "unknown"


class Executions(Protocol):
    def state(self, workflow_execution: str) -> Execution:
        """Where `project/domain/name` stands; UNKNOWN when it cannot be told."""


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of `pid`, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    return fields[0], int(fields[19])


def local_run(pid: int) -> str:
    """A local run's execution name: the process, identified by pid and start time (no reuse)."""
    import uuid

    stat = proc_stat(pid)
    return f"pid{pid}-t{stat[1] if stat else 0}-{uuid.uuid4().hex[:8]}"


class LocalExecutions:
    def state(self, workflow_execution: str) -> Execution:
        match = _LOCAL_RUN.match(workflow_execution)
        if match is None:
            return Execution.UNKNOWN
        stat = proc_stat(int(match["pid"]))
        alive = stat is not None and stat[0] not in ("Z", "X") and stat[1] == int(match["start"])
        return Execution.RUNNING if alive else Execution.ENDED


def flyteworkflow_state(obj: dict[str, Any] | None) -> Execution:
    """An execution's state from its FlyteWorkflow object (None: there is none)."""
    if obj is None or obj.get("metadata", {}).get("deletionTimestamp"):
        return Execution.ENDED
    phase = obj.get("status", {}).get("phase")
    if phase == _PHASE_SUCCESS:
        return Execution.SUCCEEDED
    if phase in (_PHASE_FAILED, _PHASE_ABORTED):
        return Execution.ENDED
    return Execution.RUNNING


def is_missing_object(status: int, body: str | None, name: str) -> bool:
    """A 404 for the object itself (its name in the Status details), not for an unserved resource
    (no CRD: a 404 whose details name nothing)."""
    if status != 404:
        return False
    try:
        details = json.loads(body or "{}").get("details") or {}
    except ValueError:
        return False
    return bool(details.get("name") == name and details.get("kind") == FLYTEWORKFLOWS)


class FlyteExecutions:
    """FlyteWorkflow objects, through the connector's kubeconfig (or in-cluster account), which needs
    `get flyteworkflows` in the executions' namespaces."""

    def __init__(self, kubeconfig: str | None, namespace_template: str) -> None:
        from kubernetes import client

        from flyte_agent.pods import api_client

        self._objects = client.CustomObjectsApi(api_client(kubeconfig))
        self._namespace = namespace_template
        self._plural = FLYTEWORKFLOWS

    def namespace(self, project: str, domain: str) -> str:
        return self._namespace.replace("{project}", project).replace("{domain}", domain)

    def state(self, workflow_execution: str) -> Execution:
        if _LOCAL_RUN.match(workflow_execution):  # a local run against a cluster: its process
            return LocalExecutions().state(workflow_execution)
        parts = workflow_execution.split("/")
        if len(parts) != 3 or not all(_NAME.match(p) for p in parts):
            return Execution.UNKNOWN  # no Flyte execution (a share's marker, a local run)
        project, domain, name = parts
        namespace = self.namespace(project, domain)
        try:
            obj = self._objects.get_namespaced_custom_object(
                FLYTEWORKFLOW_GROUP, FLYTEWORKFLOW_VERSION, namespace, self._plural, name,
                _request_timeout=_REQUEST_SECONDS)
        except Exception as err:  # noqa: BLE001 - unknown changes nothing: the fleet lapses as before
            if is_missing_object(getattr(err, "status", 0), getattr(err, "body", None), name):
                return Execution.ENDED
            log.warning("cannot read the FlyteWorkflow of %s in %s: %s", workflow_execution, namespace, err)
            return Execution.UNKNOWN
        return flyteworkflow_state(obj if isinstance(obj, dict) else None)


def holders(leases: Iterable[str], execution: str) -> list[str]:
    """Whose executions a fleet serves: a shared fleet's lease holders, else its own workflow execution."""
    held = list(leases)
    if held:
        return held
    own = workflow_execution(execution)
    return [own] if own else []


def states(executions: Executions | None, leases: Iterable[str], execution: str) -> dict[str, Execution]:
    """Where each of the fleet's holders (see `holders`) stands, asked once (a FlyteWorkflow read each
    on a cluster); {} without a probe."""
    if executions is None:
        return {}
    return {h: executions.state(h) for h in holders(leases, execution)}


def check_watchable(executions: Executions | None, workflow_execution: str) -> None:
    """At CreateTask: a cluster probe must see the execution running, else gc would take its fleet
    for gone. ValueError naming the settings to fix; an unreadable execution passes (gc then changes
    nothing for it)."""
    if not isinstance(executions, FlyteExecutions):
        return
    if executions.state(workflow_execution) is Execution.ENDED:
        project, domain, name = workflow_execution.split("/")
        raise ValueError(
            f"execution {workflow_execution} has no running FlyteWorkflow {name!r} in namespace "
            f"{executions.namespace(project, domain)!r}, so this connector would release its fleet as "
            "aborted: run the connector in the cluster whose propeller runs the executions, set "
            "GRAPHFLEET_CONSUMER_NAMESPACE to propeller's namespace mapping, or set "
            "GRAPHFLEET_WATCH_EXECUTIONS=false (fleets then lapse at their ttl_seconds)")


def make_executions(backend: str, kubeconfig: str | None, namespace_template: str) -> Executions | None:
    """The backend's execution probe; None where none can be made (fleets then lapse at their expiry)."""
    if backend == "local":
        return LocalExecutions()
    try:
        return FlyteExecutions(kubeconfig, namespace_template)
    except Exception as err:  # noqa: BLE001 - no cluster config: nothing is renewed or released, said once
        log.warning("Flyte executions cannot be read (%s): fleets are neither renewed past their expiry "
                    "nor released when their execution is aborted", err)
        return None
