"""The interface both provisioners (local subprocesses, Pulumi stacks) implement for the connector.

The connector is a thin translation between Flyte's create/get/delete and these calls. Every call
takes only what the `ResourceMeta` carries (`Provision`), so any connector replica, after any
restart, can answer for any execution: state lives in the world (processes, Pulumi stacks), never in
connector memory.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Protocol

from flyte_agent.executions import Executions
from infra.spec import DataServiceSpec


class Phase(enum.Enum):
    QUEUED = "queued"        # accepted, work not started yet (or waiting for a worker)
    UPDATING = "updating"    # servers starting / `pulumi up` running
    READY = "ready"          # every endpoint answers gRPC health SERVING
    FAILED = "failed"        # gave up after bounded retries; `message` says why and what to do
    ABSENT = "absent"        # nothing exists (never created, or deleted)


@dataclass(frozen=True)
class Provision:
    """Everything later calls need, recorded at create and carried in the ResourceMeta."""

    name: str                 # deterministic from the task execution identity (DNS-1123)
    spec: DataServiceSpec     # partitions resolved
    owner: str                # who asked (project/domain or user)
    execution: str            # `project/domain/execution-name/node`: tags, logs, release_execution()
    created_at: float         # epoch seconds; expiry = created_at + spec.ttl_seconds
    # A shared fleet (flyte_agent/leases.py): the workflow execution whose lease this provision takes;
    # the lease ends at `expires_at`. "" for a fleet of its own.
    holder: str = ""

    @property
    def expires_at(self) -> float:
        return self.created_at + self.spec.ttl_seconds


class ServerPhase(enum.Enum):
    """One graph-engine server, as a person watching a fleet come up would describe it."""

    PENDING = "pending"            # not started yet (no process / pod not scheduled)
    LOADING = "loading"            # running, loading its partitions (gRPC health not SERVING yet)
    RESTARTING = "restarting"      # exited at least once and is starting again
    SERVING = "serving"            # gRPC health SERVING: its partitions are loaded
    FAILED = "failed"              # gave up on it (restart budget spent)
    UNKNOWN = "unknown"            # the backend cannot see it (e.g. no read access to pods)


@dataclass(frozen=True)
class ServerState:
    """One server of a fleet: what progress messages, log links, the Deck and `graphfleet fleets` show."""

    ordinal: int
    endpoint: str
    phase: ServerPhase
    restarts: int = 0
    reason: str = ""          # why it last exited: "exit code 1", "SIGKILL", "OOMKilled"
    started_at: float = 0.0   # epoch seconds its current process/pod started (0: unknown)
    log_path: str = ""        # local backend: its log file
    pod: str = ""             # cluster: its pod (log-link templates fill {{ .podName }} with it)
    namespace: str = ""
    container: str = ""


@dataclass(frozen=True)
class Status:
    phase: Phase
    endpoints: list[str] = field(default_factory=list)
    message: str = ""
    servers: list[ServerState] = field(default_factory=list)  # empty when the backend cannot tell


@dataclass(frozen=True)
class FleetInfo:
    """One live fleet as an operator sees it (`graphfleet fleets`, the `graphfleet_fleets` gauge)."""

    name: str
    owner: str                # project/domain
    execution: str            # the task execution that made it
    phase: Phase
    created_at: float
    expires_at: float
    replicas: int
    endpoints: list[str] = field(default_factory=list)
    servers: list[ServerState] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)  # shared fleets: the executions holding a lease
    message: str = ""


def check_workflow_execution(value: str) -> None:
    """Refuse anything but `project/domain/name`: an empty or partial one must never match every fleet."""
    parts = value.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"workflow execution {value!r} is not project/domain/name; nothing was released")


# A fleet name: a DNS-1123 label (what `provision_name` makes, and what every Kubernetes object of the
# fleet is called). Never a path: no '/', no '.', so it cannot name anything outside the fleets.
FLEET_NAME_MAX = 63
_FLEET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InvalidFleetName(ValueError):
    """A value that should name a fleet does not; nothing was looked up or touched."""


class NotOwner(PermissionError):
    """The fleet is recorded under another owner (project/domain); nothing was touched."""


def is_fleet_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= FLEET_NAME_MAX and bool(_FLEET_NAME.match(name))


def check_fleet_name(name: str) -> str:
    """`name` if it is a fleet name (a DNS-1123 label of at most 63 characters), else InvalidFleetName."""
    if not is_fleet_name(name):
        raise InvalidFleetName(
            f"{name!r} is not a data service name: expected a DataServiceTask's `service` output (lower-case "
            f"letters, digits and '-', at most {FLEET_NAME_MAX} characters, e.g. gf-run-n0-1a2b3c4d); "
            "nothing was looked up or touched")
    return name


def check_owner(name: str, recorded: str | None, owner: str) -> None:
    """Refuse unless the fleet's recorded owner is `owner`. A fleet that records no owner is refused
    too: it cannot be shown to be the caller's."""
    if not owner or recorded != owner:
        raise NotOwner(f"data service {name} does not belong to {owner or 'an unknown project/domain'}; a "
                       "teardown releases only fleets its own project and domain provisioned; nothing was "
                       "touched")


class DestroyInProgress(RuntimeError):
    """delete() is still tearing the fleet down (or another process is operating on it): a
    retryable answer; a later delete() reports the outcome."""


class GcError(RuntimeError):
    """Some expired stacks could not be destroyed; `removed` were."""

    def __init__(self, removed: list[str], failures: list[str]) -> None:
        self.removed = removed
        self.failures = failures
        super().__init__(f"garbage collection removed {len(removed)} stack(s) but failed on "
                         f"{len(failures)}; they are retried on the next pass:\n" + "\n".join(failures))


class Provisioner(Protocol):
    # How gc tells whether a holder's execution runs or has ended (None: it cannot).
    executions: Executions | None

    def create(self, provision: Provision) -> None:
        """Start provisioning and return at once (well under a second). Idempotent: a retried
        create of the same `provision.name` adopts what exists. With `provision.holder` (a shared
        fleet) it also takes that execution's lease until `provision.expires_at`, writing nothing if
        the lease already runs that long, and raises `leases.ShareConflict` (a ValueError) if the fleet
        runs with another spec."""

    def status(self, provision: Provision) -> Status:
        """Level-triggered: look at what exists, move it toward the spec, report the phase."""

    def delete(self, name: str, owner: str, abort: bool = False) -> None:
        """Tear down the fleet `name` on behalf of `owner` (project/domain), within a bounded wait.
        `abort`: the caller is the fleet's own task (DeleteTask), whose create may still be queued; the
        delete must leave a tombstone that create honours (Pulumi; the local create is synchronous).
        Idempotent: an absent fleet is success. Raises `InvalidFleetName` for a name that is not one,
        `NotOwner` when the fleet records another owner (both before anything is touched),
        `DestroyInProgress` while the teardown goes on, anything else if it failed."""

    def renew(self, name: str, owner: str, expires_at: float, holder: str = "") -> float:
        """Extend the fleet's expiry to `expires_at` (never shorten it) for `owner`; with `holder`, that
        execution's lease on a shared fleet. Returns the fleet's expiry now recorded. Expiry and leases
        live in the fleet's record, so any replica's gc honours them."""

    def release(self, name: str, owner: str, holder: str) -> int | None:
        """Drop `holder`'s lease on the shared fleet `name` for `owner` (`NotOwner` otherwise); the last
        lease stops the fleet as delete() does. Returns the live leases left; None if `name` is no
        shared fleet (the caller deletes it as usual). Idempotent."""

    def release_execution(self, workflow_execution: str) -> list[str]:
        """Tear down every fleet of the workflow execution `project/domain/name` (whichever node made
        it), within delete()'s bounded wait; returns their names. Level-triggered and idempotent:
        none found is success. Raises ValueError for an ill-formed execution, `DestroyInProgress`
        while teardowns go on, anything else, naming each fleet that failed, once they have ended."""

    def gc(self, now: float) -> list[str]:
        """Follow every fleet's holders (flyte_agent/executions.py): drop the lease of one whose
        execution has ended (a fleet of its own: tear it down); at a fleet's expiry renew the holders
        still running, else tear it down. Returns the names torn down."""

    def fleets(self) -> list[FleetInfo]:
        """Every live fleet (an operator's view): read only, never starts, restarts or deletes anything."""

    def observed_fleets(self) -> tuple[float, list[FleetInfo]] | None:
        """What the provisioner last saw of its fleets, with when (epoch seconds), for the fleet gauges:
        it starts no listing that costs more than reading local files (None: nothing seen yet)."""
