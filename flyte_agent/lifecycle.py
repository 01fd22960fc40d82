"""A fleet's lifecycle, written once for both backends: its record and the policy over it.

The record is what any process needs to decide a fleet's fate: its owner, the execution that made it,
its expiry, a shared fleet's leases (flyte_agent/leases.py) and whether it is a tombstone. The policy:

- take a lease (a create of a shared fleet that runs), renew, release (the last lease stops the fleet);
- one gc pass over every fleet: a holder whose execution ended is released (a fleet of its own is
  stopped), and at expiry the holders still running are renewed, else the fleet is stopped.

Each backend supplies a `FleetStore`: where the record lives (local: fleet.json under the fleet's file
lock; Pulumi: the stack's tags and its lease objects) and how a fleet is stopped (local: its processes;
Pulumi: a destroy). Nothing else about a backend is known here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from flyte_agent import leases
from flyte_agent.executions import Execution, Executions, states
from flyte_agent.provisioner import Provision, check_owner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetRecord:
    name: str
    owner: str | None          # project/domain; None when not recorded (then no caller owns it)
    execution: str             # the task execution that made it (a shared fleet: leases.marker_execution)
    expires_at: float          # epoch seconds; a shared fleet's is its latest lease's
    leases: Mapping[str, float] | None = None  # a shared fleet's: holder -> expiry; None: not shared
    shape: Mapping[str, Any] = field(default_factory=dict)  # a shared fleet's spec (leases.fleet_shape)
    tombstone: bool = False    # deleted, kept only so nothing brings it back; serves nobody
    # The backend's own handle on what it read (local: the fleet.json dict; Pulumi: stack and tags).
    source: Any = field(default=None, compare=False, repr=False)

    @property
    def shared(self) -> bool:
        return self.leases is not None


class FleetStore(Protocol):
    """Where a backend keeps fleet records, and how it stops a fleet."""

    label: str  # the backend, as metrics name it

    def names(self) -> list[str]:
        """Every fleet that may hold a record (a listing; each is read again before it is acted on)."""

    def lock(self, name: str) -> AbstractContextManager[object]:
        """Held across a read and the writes that depend on it: one lease change of a fleet at a time."""

    def read(self, name: str) -> FleetRecord | None:
        """The fleet's record; None when there is none (absent, or being deleted)."""

    def reread(self, record: FleetRecord) -> FleetRecord | None:
        """`record` again, the lock held: what changed since it was read (a lease taken) counts."""

    def when(self, expires_at: float) -> float:
        """`expires_at` as the store records it (Pulumi's tags hold whole seconds)."""

    def put_lease(self, record: FleetRecord, holder: str, expires_at: float) -> None: ...

    def drop_lease(self, record: FleetRecord, holder: str) -> None: ...

    def put_expiry(self, record: FleetRecord, expires_at: float) -> None: ...

    def stop(self, record: FleetRecord, owner: str | None) -> None:
        """Tear the fleet down, the caller holding its lock: for `owner` (a release: within a caller's
        bounded wait) or for gc (None)."""


class NoSuchFleet(LookupError):
    """Nothing to renew: no fleet of that name is recorded."""


def take_lease(store: FleetStore, record: FleetRecord, provision: Provision) -> None:
    """`provision.holder`'s lease on the running shared fleet `record`: refused for another owner or
    spec; written only where it moves (a retried create writes nothing). Caller holds the lock."""
    check_owner(provision.name, record.owner, provision.owner)
    leases.check_same_spec(str(provision.spec.share), record.shape,
                           leases.fleet_shape(provision.spec.to_custom()))
    extend(store, record, provision.expires_at, provision.holder)


def extend(store: FleetStore, record: FleetRecord, expires_at: float, holder: str) -> FleetRecord:
    """Move `holder`'s lease (if any) and the fleet's expiry to `expires_at`, never earlier; write only
    what moves. Returns the record as written. Caller holds the lock."""
    expires_at = store.when(expires_at)
    if holder and (record.leases or {}).get(holder, 0.0) < expires_at:
        store.put_lease(record, holder, expires_at)
        record = replace(record, leases={**(record.leases or {}), holder: expires_at})
    if expires_at > record.expires_at:
        store.put_expiry(record, expires_at)
        record = replace(record, expires_at=expires_at)
    return record


def renew(store: FleetStore, name: str, owner: str, expires_at: float, holder: str = "") -> float:
    """The Provisioner's `renew`: `extend` for the fleet's owner."""
    with store.lock(name):
        record = store.read(name)
        if record is None:
            raise NoSuchFleet(f"no data service {name}: nothing to renew")
        check_owner(name, record.owner, owner)
        return extend(store, record, expires_at, holder).expires_at


def release(store: FleetStore, name: str, owner: str, holder: str, now: float) -> int | None:
    """Drop `holder`'s lease on the shared fleet `name` for `owner`; the last live lease stops the fleet.
    Returns the live leases left; None if `name` is no shared fleet."""
    with store.lock(name):
        record = store.read(name)
        if record is None or record.leases is None:
            return None
        check_owner(name, record.owner, owner)
        if holder in record.leases:
            store.drop_lease(record, holder)
        left = leases.live(leases.drop(record.leases, holder), now)
        if left:
            latest = store.when(leases.expiry(left))
            if latest != record.expires_at:
                store.put_expiry(record, latest)
            return len(left)
        store.stop(record, owner)
    return 0


@dataclass
class GcPass:
    stopped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # `<name>: <why>`: retried on the next pass


def collect(store: FleetStore, executions: Executions | None, now: float, renew_seconds: float,
            names: Iterable[str] | None = None,
            failure: type[BaseException] | tuple[type[BaseException], ...] = OSError,
            describe: Callable[[BaseException], str] = str) -> GcPass:
    """One gc pass over `names` (every fleet by default). An error of type `failure` on one fleet is
    recorded (`describe(err)`) and the pass goes on; any other error ends the pass."""
    done = GcPass()
    for name in store.names() if names is None else names:
        try:
            if _collect_one(store, executions, name, now, renew_seconds):
                done.stopped.append(name)
        except failure as err:
            done.failures.append(f"{name}: {describe(err)}")
    return done


def _collect_one(store: FleetStore, executions: Executions | None, name: str, now: float,
                 renew_seconds: float) -> bool:
    record = store.read(name)
    if record is None:
        return False
    # Each holder's execution, asked once a pass; a tombstone serves nobody.
    seen = {} if record.tombstone else states(executions, record.leases or [], record.execution)
    ended = [holder for holder, state in seen.items() if state is Execution.ENDED]
    if ended:
        log.info("fleet %s: %s ended; released", name, ", ".join(ended))
        if record.leases is None:  # a fleet of its own: stopped, as its execution's release would
            with store.lock(name):
                store.stop(record, None)
            return True
        return 0 in [release(store, name, record.owner or "", holder, now) for holder in ended]
    if now < record.expires_at:
        return False
    with store.lock(name):
        record = store.reread(record)
        if record is None or now < record.expires_at:
            return False
        running = [holder for holder, state in seen.items() if state is Execution.RUNNING]
        for holder in running:
            log.info("fleet %s: %s still runs; renewed for %gs", name, holder, renew_seconds)
            record = extend(store, record, now + renew_seconds, holder if record.shared else "")
        if running:
            return False
        store.stop(record, None)
    return True
