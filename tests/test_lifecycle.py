"""The fleet lifecycle policy (flyte_agent/lifecycle.py) against an in-memory store: the rules both
backends share, without processes or stacks. The backends' own tests (test_leases.py,
test_local_provisioner.py, test_pulumi_provisioner.py) run the same code through their stores."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest

from flyte_agent import leases, lifecycle
from flyte_agent.executions import Execution
from flyte_agent.provisioner import NotOwner

NOW = 1_000_000.0
OWNER = "proj/dev"


class Store:
    """Records in a dict; every write and stop is logged, so a test sees what the policy did."""

    label = "memory"

    def __init__(self, *records: lifecycle.FleetRecord, whole_seconds: bool = False) -> None:
        self.records = {r.name: r for r in records}
        self.log: list[tuple[str, ...]] = []
        self.whole_seconds = whole_seconds
        self.broken: set[str] = set()

    def names(self) -> list[str]:
        return sorted(self.records)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        yield

    def read(self, name: str) -> lifecycle.FleetRecord | None:
        if name in self.broken:
            raise OSError(f"{name} cannot be read")
        return self.records.get(name)

    def reread(self, record: lifecycle.FleetRecord) -> lifecycle.FleetRecord | None:
        return self.read(record.name)

    def when(self, expires_at: float) -> float:
        return float(int(expires_at)) if self.whole_seconds else expires_at

    def put_lease(self, record: lifecycle.FleetRecord, holder: str, expires_at: float) -> None:
        self.log.append(("lease", record.name, holder, str(expires_at)))
        held = {**(self.records[record.name].leases or {}), holder: expires_at}
        self.records[record.name] = dataclasses.replace(self.records[record.name], leases=held)

    def drop_lease(self, record: lifecycle.FleetRecord, holder: str) -> None:
        self.log.append(("drop", record.name, holder))
        held = leases.drop(self.records[record.name].leases or {}, holder)
        self.records[record.name] = dataclasses.replace(self.records[record.name], leases=held)

    def put_expiry(self, record: lifecycle.FleetRecord, expires_at: float) -> None:
        self.log.append(("expiry", record.name, str(expires_at)))
        self.records[record.name] = dataclasses.replace(self.records[record.name], expires_at=expires_at)

    def stop(self, record: lifecycle.FleetRecord, owner: str | None) -> None:
        self.log.append(("stop", record.name, str(owner)))
        del self.records[record.name]


class Executions:
    def __init__(self, **states: Execution) -> None:
        self.states = {f"proj/dev/{name}": state for name, state in states.items()}
        self.asked: list[str] = []

    def state(self, workflow_execution: str) -> Execution:
        self.asked.append(workflow_execution)
        return self.states.get(workflow_execution, Execution.UNKNOWN)


def own(name: str, expires_at: float, execution: str = "e1") -> lifecycle.FleetRecord:
    return lifecycle.FleetRecord(name=name, owner=OWNER, execution=f"proj/dev/{execution}/n0",
                                 expires_at=expires_at)


def shared(name: str, **held: float) -> lifecycle.FleetRecord:
    holders = {f"proj/dev/{h}": t for h, t in held.items()}
    return lifecycle.FleetRecord(name=name, owner=OWNER, leases=holders, expires_at=leases.expiry(holders),
                                 execution=leases.marker_execution("proj", "dev", "s"))


def test_renew_never_shortens_and_writes_only_what_moves() -> None:
    store = Store(own("a", NOW + 60))
    assert lifecycle.renew(store, "a", OWNER, NOW + 30) == NOW + 60
    assert store.log == []
    assert lifecycle.renew(store, "a", OWNER, NOW + 90.7) == NOW + 90.7
    assert store.log == [("expiry", "a", str(NOW + 90.7))]
    with pytest.raises(NotOwner):
        lifecycle.renew(store, "a", "other/dev", NOW + 120)
    with pytest.raises(lifecycle.NoSuchFleet):
        lifecycle.renew(store, "absent", OWNER, NOW + 120)


def test_a_store_of_whole_seconds_sees_no_move_in_a_fraction() -> None:
    """Pulumi's tags hold whole seconds: a renewal within the recorded second writes nothing."""
    store = Store(shared("s", x=NOW + 60), whole_seconds=True)
    lifecycle.renew(store, "s", OWNER, NOW + 60.9, holder="proj/dev/x")
    assert store.log == []


def test_the_last_live_lease_released_stops_the_fleet_for_its_owner() -> None:
    store = Store(shared("s", x=NOW + 60, y=NOW + 120, lapsed=NOW - 1))
    assert lifecycle.release(store, "s", OWNER, "proj/dev/y", NOW) == 1
    assert store.log == [("drop", "s", "proj/dev/y"), ("expiry", "s", str(NOW + 60))]
    with pytest.raises(NotOwner):
        lifecycle.release(store, "s", "other/dev", "proj/dev/x", NOW)
    assert lifecycle.release(store, "s", OWNER, "proj/dev/x", NOW) == 0  # the lapsed lease does not count
    assert store.log[-1] == ("stop", "s", OWNER)
    assert lifecycle.release(store, "s", OWNER, "proj/dev/x", NOW) is None  # gone: no shared fleet
    assert lifecycle.release(Store(own("a", NOW + 60)), "a", OWNER, "proj/dev/e1", NOW) is None


def test_gc_releases_ended_renews_running_and_stops_lapsed() -> None:
    store = Store(own("ended", NOW + 600, "gone"), own("running", NOW - 1, "busy"),
                  own("lapsed", NOW - 1, "unknown"), own("live", NOW + 600, "unknown"),
                  shared("s", gone=NOW + 600, busy=NOW + 600))
    executions = Executions(gone=Execution.ENDED, busy=Execution.RUNNING)
    done = lifecycle.collect(store, executions, NOW, renew_seconds=300)
    assert (sorted(done.stopped), done.failures) == (["ended", "lapsed"], [])
    assert sorted(store.records) == ["live", "running", "s"]
    assert store.records["running"].expires_at == NOW + 300
    assert dict(store.records["s"].leases or {}) == {"proj/dev/busy": NOW + 600}


def test_a_shared_fleet_at_expiry_renews_each_running_holder() -> None:
    store = Store(shared("s", busy=NOW - 5, idle=NOW - 1))
    lifecycle.collect(store, Executions(busy=Execution.RUNNING), NOW, renew_seconds=300)
    assert store.log == [("lease", "s", "proj/dev/busy", str(NOW + 300)), ("expiry", "s", str(NOW + 300))]


def test_without_a_probe_only_expiry_decides() -> None:
    store = Store(own("lapsed", NOW), own("live", NOW + 1))
    assert lifecycle.collect(store, None, NOW, renew_seconds=300).stopped == ["lapsed"]


def test_a_tombstone_asks_no_execution_and_goes_at_its_expiry() -> None:
    executions = Executions(e1=Execution.RUNNING)
    store = Store(dataclasses.replace(own("t", NOW - 1), tombstone=True))
    assert lifecycle.collect(store, executions, NOW, renew_seconds=300).stopped == ["t"]
    assert executions.asked == []


def test_one_fleet_that_fails_does_not_stop_the_pass() -> None:
    store = Store(own("a", NOW - 1), own("b", NOW - 1))
    store.broken.add("a")
    done = lifecycle.collect(store, None, NOW, renew_seconds=300)
    assert done.stopped == ["b"] and done.failures == ["a: a cannot be read"]
