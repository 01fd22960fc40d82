"""Shared fleets by lease: `DataServiceConfig(share="name")`. Plain rules; the provisioners keep the
leases in the fleet's own record (local: fleet.json; Pulumi: one object per holder beside the stack,
replicas.StateFiles.leases, mirrored in its tags, flyte_agent/stack_record.py).

Within a project and domain, every execution whose config has the same `share`, graph and spec uses
one fleet, named from (project, domain, share) alone. Each workflow execution holds a lease on it
that ends `ttl_seconds` after it was taken; the fleet's expiry is its latest lease's, so the one gc
that stops lapsed fleets stops a shared fleet when every lease has lapsed. While a holder's execution
runs (its FlyteWorkflow on a cluster, its process locally: flyte_agent/executions.py) that gc renews the
lease instead, and drops it once the execution is aborted or failed. DeleteTask, a teardown task or a
release of the execution drops the lease too; the last one stops the fleet. A different spec under
the same share is refused, naming the fields that differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flyte_agent.provisioner import Provision
from infra.names import STATEFULSET_NAME_MAX, name_hash
from infra.spec import DataServiceSpec

# Fields that may differ between the executions sharing a fleet: each lease's own duration.
PER_LEASE = frozenset({"ttl_seconds", "share"})

Leases = dict[str, float]  # workflow execution (project/domain/name) -> expiry, epoch seconds


class ShareConflict(ValueError):
    """A share is held with another spec; the message names the differing fields."""


def fleet_name(project: str, domain: str, share: str) -> str:
    """The shared fleet's name: the same for every execution of the project and domain."""
    digest = name_hash("/".join((project, domain, "share", share)))
    slug = f"share-{share}"[: STATEFULSET_NAME_MAX - len("gf--") - len(digest)].rstrip("-")
    return f"gf-{slug}-{digest}"


def fleet_shape(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every holder of a shared fleet must agree on (what the record keeps)."""
    return {k: v for k, v in spec.items() if k not in PER_LEASE}


def differences(running: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """`field: running value vs asked value` for every fleet-shaping field that differs."""
    keys = sorted((set(running) | set(asked)) - PER_LEASE)
    return [f"{k}: {running.get(k)!r} running vs {asked.get(k)!r} asked" for k in keys
            if running.get(k) != asked.get(k)]


def check_same_spec(share: str, running: Mapping[str, Any], asked: Mapping[str, Any]) -> None:
    differing = differences(running, asked)
    if differing:
        raise ShareConflict(f"share {share!r} is in use with another spec ({'; '.join(differing)}); use the "
                            "same config as the running fleet, or another share name")


def take(leases: Mapping[str, float], holder: str, expires_at: float, now: float) -> Leases:
    """`holder`'s lease until `expires_at` (never shortened); lapsed leases are dropped on the way."""
    kept = live(leases, now)
    kept[holder] = max(expires_at, kept.get(holder, 0.0))
    return kept


def drop(leases: Mapping[str, float], holder: str) -> Leases:
    return {e: t for e, t in leases.items() if e != holder}


def live(leases: Mapping[str, float], now: float) -> Leases:
    return {e: t for e, t in leases.items() if t > now}


def expiry(leases: Mapping[str, float]) -> float:
    """The fleet's expiry: its latest lease's (0: none)."""
    return max(leases.values(), default=0.0)


def marker_execution(project: str, domain: str, share: str) -> str:
    """What a shared fleet records as its execution: no workflow execution's (Flyte names have no
    ':'), so releasing an execution never tears down a fleet that others hold leases on."""
    return f"{project}/{domain}/share:{share}/shared"


def shared_provision(owner: str, share: str, spec: DataServiceSpec, holder: str,
                     taken_at: float) -> Provision:
    """What the provisioner is asked for: the share's fleet, taking `holder`'s lease (a workflow
    execution) for the spec's `ttl_seconds` from `taken_at`."""
    project, domain = owner.split("/", 1)
    return Provision(name=fleet_name(project, domain, share), spec=spec, owner=owner, created_at=taken_at,
                     execution=marker_execution(project, domain, share), holder=holder)
