"""Is a fleet's consumer still running? What gc asks before it stops a lapsed fleet.

A fleet (or a lease on a shared one) has a time to live, but a training run may outlast it, and its
code must not change to renew anything. So renewal is level-triggered: when gc finds a fleet past
its expiry it asks, for each holding workflow execution, whether that execution still runs, and
renews the expiry by `Settings.renew_seconds` instead of stopping the fleet; once nothing runs, the
fleet lapses at its next expiry.

- Cluster (`KubernetesConsumers`): Flyte labels every task pod of a workflow execution with
  `execution-id`, `project` and `domain` (flytepropeller v1.16.2 pkg/compiler/transformers/k8s/
  workflow.go puts them on the FlyteWorkflow; pkg/controller/nodes/node_exec_context.go copies the
  workflow's labels onto every node's, which become the pod's), in the execution's namespace
  (`{project}-{domain}` by propeller's default namespace mapping). A pod not yet Succeeded or Failed
  means the execution still runs.
- Local (`LocalConsumers`): a local run is one process (connector.LOCAL_RUN names it by pid and
  start time): it runs while that process lives. Executions of a served local connector carry no
  process to look at: they are not renewed (they lapse at their expiry).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from flyte_agent.provisioner import workflow_execution

log = logging.getLogger(__name__)

_REQUEST_SECONDS = 2.0
# connector.LOCAL_RUN: pid<pid>-t<start ticks>-<random>
_LOCAL_RUN = re.compile(r"^local/local/pid(?P<pid>\d+)-t(?P<start>\d+)-[0-9a-f]+$")


class Consumers(Protocol):
    def running(self, workflow_execution: str) -> bool:
        """Does `project/domain/name` still run? False when it cannot be told."""


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


class LocalConsumers:
    def running(self, workflow_execution: str) -> bool:
        match = _LOCAL_RUN.match(workflow_execution)
        if match is None:
            return False
        stat = proc_stat(int(match["pid"]))
        return stat is not None and stat[0] not in ("Z", "X") and stat[1] == int(match["start"])


class KubernetesConsumers:
    """Task pods of the execution, through the connector's kubeconfig (or in-cluster account), which
    needs `list pods` in the executions' namespaces."""

    def __init__(self, kubeconfig: str | None, namespace_template: str) -> None:
        from flyte_agent.pods import core_api

        self._core = core_api(kubeconfig)
        self._namespace = namespace_template

    def running(self, workflow_execution: str) -> bool:
        parts = workflow_execution.split("/")
        if len(parts) != 3 or not all(parts):
            return False
        project, domain, name = parts
        namespace = self._namespace.replace("{project}", project).replace("{domain}", domain)
        try:
            found = self._core.list_namespaced_pod(
                namespace, label_selector=f"execution-id={name},project={project},domain={domain}",
                field_selector="status.phase!=Succeeded,status.phase!=Failed", limit=1,
                _request_timeout=_REQUEST_SECONDS)
        except Exception as err:  # noqa: BLE001 - unknown is "not running": the fleet lapses as before
            log.warning("cannot read the pods of execution %s in %s: %s", workflow_execution, namespace, err)
            return False
        return bool(found.items)


def running_holders(consumers: Consumers | None, leases: Iterable[str], execution: str) -> list[str]:
    """Who keeps a fleet past its expiry: a shared fleet's lease holders, else the fleet's own workflow
    execution, each only while its consumer still runs (none without a way to tell)."""
    if consumers is None:
        return []
    holders = list(leases) or [workflow_execution(execution)]
    return [h for h in holders if h and consumers.running(h)]


def make_consumers(backend: str, kubeconfig: str | None, namespace_template: str) -> Consumers | None:
    """The backend's consumer probe; None where none can be made (fleets then lapse at their expiry)."""
    if backend == "local":
        return LocalConsumers()
    try:
        return KubernetesConsumers(kubeconfig, namespace_template)
    except Exception as err:  # noqa: BLE001 - no cluster config: nothing is renewed, said once here
        log.warning("execution pods cannot be read (%s): fleets are not renewed past their expiry", err)
        return None
