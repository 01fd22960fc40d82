"""Shared fleets held by leases (flyte_agent/leases.py), on top of any `Provisioner`.

The share record lives beside the fleets, never in connector memory, so every replica and every
restart sees the same leases:

    <state_dir>/.shares/<fleet>.json   {"share", "owner", "spec", "created_at", "leases": {execution: expiry}}
    <state_dir>/.shares/.<fleet>.lock  flock: one lease change of a fleet at a time

Locally that is the fleets' own state dir. The Pulumi backend keeps no state dir that other replicas
share; its leases would live in the fleet's stack, which is not built yet: `share` is refused there.

The provisioner sees a shared fleet as an ordinary one whose execution is `leases.marker_execution`
(no workflow's, so releasing an execution never tears it down) and whose time-to-live is the longest
allowed: the leases decide when it stops (`release`, `release_execution`, `sweep`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flyte_agent import leases
from flyte_agent.files import locked, write_json
from flyte_agent.provisioner import FleetInfo, Provision, Provisioner
from flyte_agent.provisioner import workflow_execution as workflow_execution_of
from infra.spec import TTL_MAX_SECONDS, DataServiceSpec

if TYPE_CHECKING:
    from flyte_agent.settings import Settings


def shared_provision(name: str, owner: str, share: str, spec: DataServiceSpec, created_at: float
                     ) -> Provision:
    """What the provisioner is asked for: the fleet under a marker execution, living as long as allowed."""
    project, domain = owner.split("/", 1)
    fleet_spec = DataServiceSpec.model_validate({**spec.to_custom(), "ttl_seconds": TTL_MAX_SECONDS})
    return Provision(name=name, spec=fleet_spec, owner=owner, created_at=created_at,
                     execution=leases.marker_execution(project, domain, share))


class SharedFleets:
    def __init__(self, root: Path, provisioner: Provisioner) -> None:
        self.root = root / ".shares"
        self.root.mkdir(parents=True, exist_ok=True)
        self.provisioner = provisioner

    def acquire(self, owner: str, share: str, spec: DataServiceSpec, execution: str, now: float
                ) -> Provision:
        """Take or renew `execution`'s lease (a task execution `project/domain/name/node`), making the
        fleet if none runs; raises `leases.ShareConflict` if it runs with another spec."""
        project, domain = owner.split("/", 1)
        name = leases.fleet_name(project, domain, share)
        with self._locked(name):
            record = self._read(name)
            if record is None:
                record = {"share": share, "owner": owner, "spec": spec.to_custom(), "created_at": now,
                          "leases": {}}
            else:
                leases.check_same_spec(share, record["spec"], spec.to_custom())
            record["leases"] = leases.take(record["leases"], workflow_execution_of(execution), now,
                                           spec.ttl_seconds)
            self._write(name, record)
            provision = shared_provision(name, owner, share, spec, record["created_at"])
            self.provisioner.create(provision)  # idempotent: adopts a running fleet
        return provision

    def is_shared(self, name: str) -> bool:
        return self._read(name) is not None

    def owner(self, name: str) -> str | None:
        record = self._read(name)
        return None if record is None else str(record["owner"])

    def release(self, name: str, workflow_execution: str, now: float) -> int:
        """Drop the execution's lease; tear the fleet down when no live lease is left. Returns the
        number of leases left (0: the fleet was torn down)."""
        with self._locked(name):
            record = self._read(name)
            if record is None:
                return 0
            record["leases"] = leases.live(leases.drop(record["leases"], workflow_execution), now)
            return self._settle(name, record)

    def release_execution(self, workflow_execution: str, now: float) -> list[str]:
        """Drop the execution's lease on every shared fleet; returns the fleets torn down."""
        stopped = []
        for name in self.names():
            record = self._read(name)
            if record is not None and workflow_execution in record["leases"]:
                if self.release(name, workflow_execution, now) == 0:
                    stopped.append(name)
        return stopped

    def sweep(self, now: float) -> list[str]:
        """Tear down every shared fleet whose leases have all expired; returns their names."""
        stopped = []
        for name in self.names():
            with self._locked(name):
                record = self._read(name)
                if record is not None and not leases.live(record["leases"], now):
                    record["leases"] = {}
                    self._settle(name, record)
                    stopped.append(name)
        return stopped

    def with_leases(self, fleets: list[FleetInfo], now: float) -> list[FleetInfo]:
        """The listing with each shared fleet's live lease holders."""
        import dataclasses

        out = []
        for fleet in fleets:
            record = self._read(fleet.name)
            held = sorted(leases.live(record["leases"], now)) if record is not None else []
            out.append(dataclasses.replace(fleet, leases=held) if held else fleet)
        return out

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))

    def _settle(self, name: str, record: dict[str, Any]) -> int:
        """Write the record back, or with no lease left tear the fleet down and forget the share."""
        if record["leases"]:
            self._write(name, record)
            return len(record["leases"])
        self.provisioner.delete(name, record["owner"])
        (self.root / f"{name}.json").unlink(missing_ok=True)
        return 0

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.root / f"{name}.json").read_text()))
        except FileNotFoundError:
            return None

    def _write(self, name: str, record: dict[str, Any]) -> None:
        write_json(self.root / f"{name}.json", record)

    def _locked(self, name: str) -> contextlib.AbstractContextManager[None]:
        return locked(self.root / f".{name}.lock")


def shared_fleets(settings: Settings, provisioner: Provisioner) -> SharedFleets | None:
    """The backend's shared fleets: leases live in the local state dir; the Pulumi backend refuses `share`."""
    return SharedFleets(settings.state_dir, provisioner) if settings.backend == "local" else None
