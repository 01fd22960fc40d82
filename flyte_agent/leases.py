"""Shared fleets by lease: `DataServiceConfig(share="name")`.

Within a project and domain, every execution whose config has the same `share`, graph and spec uses
one fleet, named from (project, domain, share) alone. Each workflow execution holds a lease on it
that expires `ttl_seconds` after it was last taken or renewed (a CreateTask or GetTask of that
execution renews it); DeleteTask, a teardown task or a release of the execution drops it; the fleet
is torn down when no live lease is left. A different spec under the same share is refused, naming
the fields that differ. Plain functions: the provisioners keep the leases with the fleet's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.names import STATEFULSET_NAME_MAX, name_hash

# Fields that may differ between the executions sharing a fleet: each lease's own duration.
_PER_LEASE = frozenset({"ttl_seconds", "share"})

Leases = dict[str, float]  # workflow execution (project/domain/name) -> expiry, epoch seconds


class ShareConflict(ValueError):
    """A share is held with another spec; the message names the differing fields."""


def fleet_name(project: str, domain: str, share: str) -> str:
    """The shared fleet's name: the same for every execution of the project and domain."""
    digest = name_hash("/".join((project, domain, "share", share)))
    slug = f"share-{share}"[: STATEFULSET_NAME_MAX - len("gf--") - len(digest)].rstrip("-")
    return f"gf-{slug}-{digest}"


def differences(running: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """`field: running value vs asked value` for every fleet-shaping field that differs."""
    keys = sorted((set(running) | set(asked)) - _PER_LEASE)
    return [f"{k}: {running.get(k)!r} running vs {asked.get(k)!r} asked" for k in keys
            if running.get(k) != asked.get(k)]


def check_same_spec(share: str, running: Mapping[str, Any], asked: Mapping[str, Any]) -> None:
    differing = differences(running, asked)
    if differing:
        raise ShareConflict(f"share {share!r} is in use with another spec ({'; '.join(differing)}); use the "
                            "same config as the running fleet, or another share name")


def take(leases: Leases, execution: str, now: float, ttl_seconds: float) -> Leases:
    """Take or renew `execution`'s lease; expired leases are dropped on the way."""
    kept = live(leases, now)
    kept[execution] = now + ttl_seconds
    return kept


def drop(leases: Leases, execution: str) -> Leases:
    return {e: t for e, t in leases.items() if e != execution}


def live(leases: Leases, now: float) -> Leases:
    return {e: t for e, t in leases.items() if t > now}


def marker_execution(project: str, domain: str, share: str) -> str:
    """What a shared fleet records as its execution: no workflow execution's (Flyte names have no
    ':'), so releasing an execution never tears down a fleet that others hold leases on."""
    return f"{project}/{domain}/share:{share}/shared"
