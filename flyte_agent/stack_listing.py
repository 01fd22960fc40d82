"""Listings over every fleet stack, read only: the operators' view and a workflow execution's stacks.

Each reads every stack (one CLI process per stack, or two): `graphfleet fleets`, the fleet gauges'
sweep and a release of an execution use them; nothing here starts an `up`, a destroy or a probe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pulumi import automation as auto
from pulumi.automation.errors import StackNotFoundError

from flyte_agent import leases, stack_record
from flyte_agent.executions import workflow_execution as workflow_execution_of
from flyte_agent.fleet_stacks import FleetStacks, UnselectedWorkspace
from flyte_agent.pods import cluster_servers
from flyte_agent.provisioner import FleetInfo, Phase


def fleet_infos(stacks: FleetStacks, now: float) -> list[FleetInfo]:
    """Every live graphfleet stack as an operator sees it (tombstones and others' stacks left out)."""
    infos = []
    with stacks.workspace(None, workspace=UnselectedWorkspace) as ws:
        for summary in ws.list_stacks():
            name = stack_record.short_stack_name(summary.name)
            stack = auto.Stack.select(name, ws)
            try:
                tags = stack.list_tags()
                history = stack.history(show_secrets=False)
            except StackNotFoundError:
                continue  # removed since the listing
            if (tags.get(stack_record.TAG_MANAGED) != "true"
                    or stack_record.is_tombstone([entry.kind for entry in history])):
                continue
            infos.append(_fleet_info(stacks, stack, tags, history, now))
    return infos


def _fleet_info(stacks: FleetStacks, stack: auto.Stack, tags: Mapping[str, str],
                history: Sequence[auto.UpdateSummary], now: float) -> FleetInfo:
    last = history[0] if history else None
    endpoints: list[str] = []
    if last is not None and last.kind == "update" and last.result == "succeeded":
        phase = Phase.READY
        endpoints = stacks.seen_up(stack, last).endpoints
    elif tags.get(stack_record.TAG_GAVE_UP) == "true":
        phase = Phase.FAILED
    else:
        busy = stacks.busy(stack.name)
        phase = Phase.UPDATING if busy is None else busy.phase
    # The stack name is the fleet name (DNS-1123 names need no shortening to be stack names); the
    # first update's start is when the fleet was made; the replicas are known once it is up.
    return FleetInfo(
        name=stack.name, owner=tags.get(stack_record.TAG_OWNER, ""),
        execution=tags.get(stack_record.TAG_EXECUTION, ""),
        phase=phase, created_at=history[-1].start_time.timestamp() if history else 0.0,
        expires_at=stack_record.expires_at(tags) or 0.0, replicas=len(endpoints), endpoints=endpoints,
        servers=cluster_servers(stack.name, stacks.settings.namespace, len(endpoints), endpoints),
        leases=sorted(leases.live(stacks.leases(stack.name, tags), now)),
        message=tags.get(stack_record.TAG_LAST_ERROR, ""))


def stacks_of(stacks: FleetStacks, workflow_execution: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The stacks graphfleet made for the workflow execution, by their execution tag; and the shared
    stacks it holds a lease on, with their owners."""
    found, held = [], []
    with stacks.workspace(None, workspace=UnselectedWorkspace) as ws:
        for summary in ws.list_stacks():
            name = stack_record.short_stack_name(summary.name)
            try:
                tags = auto.Stack.select(name, ws).list_tags()
            except StackNotFoundError:
                continue  # removed since the listing
            execution = workflow_execution_of(tags.get(stack_record.TAG_EXECUTION, ""))
            if (tags.get(stack_record.TAG_MANAGED) != "true"
                    or tags.get(stack_record.TAG_DELETED) == "true"):
                continue
            if execution == workflow_execution:
                found.append(name)
            elif workflow_execution in stacks.leases(name, tags):
                held.append((name, tags.get(stack_record.TAG_OWNER, "")))
    return found, held
