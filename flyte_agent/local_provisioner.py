"""Graph-engine fleets as local subprocesses on loopback: the `Provisioner` for development and tests.

One `python -m graph_engine.server` per ordinal on its own free 127.0.0.1 port, which the server
chooses and holds itself (`--port 0`) before it loads anything, and reports in its port file: a port
chosen here and bound minutes later could be taken by anyone meanwhile. The state dir is the only
record, so any process can answer for any fleet:

    <state_dir>/<name>/fleet.json        the provision (written at create); `expires_at` once renewed; a
                                         shared fleet's `leases` {execution: expiry} (flyte_agent/leases.py),
                                         whose latest is `expires_at`
    <state_dir>/<name>/server-<i>.port   the port ordinal i's server holds (absent until it binds)
    <state_dir>/<name>/deleting.json     fleet.json renamed by delete: a tombstone (see below)
    <state_dir>/<name>/server-<i>.pid    "<pid>" of ordinal i's current process
    <state_dir>/<name>/server-<i>.start  its start time (/proc/<pid>/stat field 22): pid + start
                                         name one process for its whole life, exit included
    <state_dir>/<name>/server-<i>.restarts  how often ordinal i was restarted
    <state_dir>/<name>/server-<i>.reason why its last process exited ("exit code 1", "SIGKILL")
    <state_dir>/<name>/server-<i>.log    its output
    <state_dir>/<name>/servers.json      what the last reconcile saw of each server (read by fleets())
    <state_dir>/.<name>.lock             flock: one create, reconcile or delete of a fleet at a time
                                         (removed by the delete that holds it)

`status()` is level-triggered: it looks at the processes and ports and moves the fleet toward
"every ordinal serving" — a crashed server is restarted on the same port with the same ordinal, as
a StatefulSet would, up to `MAX_RESTARTS`. A background thread reconciles every fleet the same way
(Flyte stops polling once the fleet is ready) and deletes expired ones. When this process exits
(Ctrl-C, atexit) it deletes the fleets it started: nothing outlives the run.

Delete first renames fleet.json to deleting.json under the fleet's lock, then stops the servers, then
removes the dir. From the rename on, the fleet is ABSENT to every process and no reconciler restarts
its servers (they reconcile only fleets with a fleet.json); a delete that died half-way is finished by
the next delete, create or reconcile round that finds the tombstone. Delete returns only once every
server has exited (a pidfd says so), so its ports and files are released when it returns.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flyte_agent import leases, lifecycle, metrics, progress
from flyte_agent.executions import Executions
from flyte_agent.executions import workflow_execution as workflow_execution_of
from flyte_agent.files import locked, write_json
from flyte_agent.local_servers import MAX_RESTARTS, ServerProcesses
from flyte_agent.provisioner import (
    FleetInfo,
    GcError,
    InvalidFleetName,
    Phase,
    Provision,
    ServerPhase,
    Status,
    check_fleet_name,
    check_owner,
    check_workflow_execution,
    is_fleet_name,
)
from graph_engine import health
from infra.spec import DataServiceSpec

if TYPE_CHECKING:
    from flyte_agent.settings import Settings

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 2.0
_TOMBSTONE = "deleting.json"
_GIVEN_UP = "failed.json"  # a FAILED fleet whose servers were stopped: its message


class LocalProvisioner:
    def __init__(self, settings: Settings, executions: Executions | None = None) -> None:
        self.state_dir = Path(settings.state_dir)
        self.executions = executions
        self.renew_seconds = settings.renew_seconds
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.probe_timeout = min(1.0, settings.ready_timeout_seconds)
        # Facts about this process only: the servers it is the parent of (`ServerProcesses`) and the
        # fleets it started (to delete at exit). The fleets themselves are described by the state dir.
        self._procs = ServerProcesses(self.state_dir)
        self._started: set[str] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None
        self._files = FleetFiles(self.state_dir, lambda name: self._delete_locked(name))
        atexit.register(self.close)

    # -- the Provisioner protocol -------------------------------------------------------------

    def create(self, provision: Provision) -> None:
        with self._files.locked(provision.name):
            if self._files.tombstone(provision.name).exists():
                # A delete died half-way: finish it, or its servers would outlive the new pid files.
                self._delete_locked(provision.name, keep_lock=True)
            record = self._files.record(provision.name)
            if record is not None and provision.holder:
                lifecycle.take_lease(self._files, _fleet_record(record), provision)
            if record is None:
                self._files.dir(provision.name).mkdir(parents=True, exist_ok=True)
                record = {"name": provision.name, "spec": provision.spec.to_custom(),
                          "owner": provision.owner, "execution": provision.execution,
                          "created_at": provision.created_at}
                if provision.holder:
                    record["leases"] = {provision.holder: provision.expires_at}
                    record["expires_at"] = provision.expires_at
                write_json(self._files.dir(provision.name) / "fleet.json", record)
                with self._mutex:
                    self._started.add(provision.name)
                for ordinal in range(provision.spec.replicas):
                    self._procs.spawn(record, ordinal)
        self._ensure_reconciler()

    def status(self, provision: Provision) -> Status:
        # A tombstoned fleet has no fleet.json: ABSENT at once, even while another process deletes it.
        if self._files.record(provision.name) is None:
            return Status(Phase.ABSENT)
        with self._files.locked(provision.name):
            record = self._files.record(provision.name)
            if record is None:
                return Status(Phase.ABSENT)
            return self._reconcile(record)

    def delete(self, name: str, owner: str, abort: bool = False) -> None:
        # `abort` needs nothing here: create() runs within CreateTask, never queued behind a delete.
        self._delete(check_fleet_name(name), owner)

    def release_execution(self, workflow_execution: str) -> list[str]:
        check_workflow_execution(workflow_execution)
        released, failures = [], []
        # Tombstoned fleets too: a delete that died half-way is finished here, not left to a reconciler.
        for record in self._files.records(include_deleting=True):
            held = workflow_execution in record.get("leases", {})
            if workflow_execution_of(record["execution"]) != workflow_execution and not held:
                continue
            try:
                if held:  # a shared fleet: drop the lease; the last one stops it
                    if self.release(record["name"], record["owner"], workflow_execution) != 0:
                        continue
                else:
                    self._delete(record["name"])
            except OSError as err:  # the others are still released; this one is reported below
                failures.append(f"{record['name']}: {err}")
            else:
                released.append(record["name"])
        if failures:
            raise RuntimeError(f"released {len(released)} local fleet(s) of {workflow_execution} but "
                               f"failed on {len(failures)}; release again to retry:\n" + "\n".join(failures))
        return released

    def gc(self, now: float) -> list[str]:
        done = lifecycle.collect(self._files, self.executions, now, self.renew_seconds)
        metrics.observe_gc("local", len(done.stopped), len(done.failures))
        if done.failures:
            raise GcError(done.stopped, done.failures)
        return done.stopped

    def renew(self, name: str, owner: str, expires_at: float, holder: str = "") -> float:
        return lifecycle.renew(self._files, check_fleet_name(name), owner, expires_at, holder)

    def release(self, name: str, owner: str, holder: str) -> int | None:
        return lifecycle.release(self._files, check_fleet_name(name), owner, holder, time.time())

    def fleets(self) -> list[FleetInfo]:
        """From the records and what the reconciler last saw of each server: no health probe."""
        infos = []
        now = time.time()
        for record in self._files.records():
            spec = DataServiceSpec.from_custom(record["spec"])
            endpoints = self._procs.endpoints(record)
            servers = self._procs.seen(record)
            phases = {s.phase for s in servers}
            phase = (Phase.FAILED if self._given_up(record["name"]) is not None else
                     Phase.READY if phases == {ServerPhase.SERVING} else
                     Phase.FAILED if ServerPhase.FAILED in phases else Phase.UPDATING)
            infos.append(FleetInfo(
                name=record["name"], owner=record["owner"], execution=record["execution"], phase=phase,
                created_at=record["created_at"], expires_at=_expires_at(record),
                replicas=spec.replicas, endpoints=endpoints, servers=servers,
                leases=sorted(leases.live(record.get("leases", {}), now)),
                message=progress.summary(servers)))
        return infos

    # -- local specifics -------------------------------------------------------------------------

    def endpoints(self, name: str) -> list[str]:
        record = self._files.record(name)
        return [] if record is None else self._procs.endpoints(record)

    def pids(self, name: str) -> list[int]:
        """The recorded server process of each ordinal (0 if none), for inspection and tests."""
        record = self._files.record(name)
        if record is None:
            return []
        return [self._procs.number(name, i, "pid") for i in range(len(self._procs.ports(record)))]

    def observed_fleets(self) -> tuple[float, list[FleetInfo]]:
        """The listing itself: it reads this host's state files, no process is started."""
        return time.time(), self.fleets()

    def close(self) -> None:
        """Stop reconciling and delete the fleets this process started."""
        self._stop.set()
        with self._mutex:
            started = sorted(self._started)
        for name in started:
            try:
                self._delete(name)
            except OSError as err:
                log.error("could not delete local fleet %s at exit: %s", name, err)
        self._procs.reap()

    def reconcile_once(self) -> None:
        """One round of the background reconciler: finish abandoned deletes, delete expired fleets,
        restart crashed servers. Public so tests can run a round deterministically."""
        self._procs.reap()
        for tombstone in sorted(self.state_dir.glob(f"*/{_TOMBSTONE}")):
            name = tombstone.parent.name
            with self._files.locked(name):
                # Re-checked under the lock: once that delete ended, a create may have made the fleet
                # again, which the stale listing must not delete.
                if self._files.tombstone(name).exists():
                    self._delete_locked(name)
                else:
                    self._files.drop_lock_if_gone(name)
        self.gc(time.time())
        for name in sorted(r["name"] for r in self._files.records()):
            with self._files.locked(name):
                # Re-read under the lock: the listing above may predate a delete by another process,
                # and a fleet without fleet.json (deleted or being deleted) must never be restarted.
                record = self._files.record(name)
                if record is not None:
                    self._reconcile(record)
                else:
                    self._files.drop_lock_if_gone(name)

    def _reconcile(self, record: dict[str, Any]) -> Status:
        name = record["name"]
        spec = DataServiceSpec.from_custom(record["spec"])
        ports = self._procs.ports(record)
        endpoints = self._procs.endpoints(record)
        given_up = self._given_up(name)
        if given_up is not None:
            return Status(Phase.FAILED, endpoints, given_up, self._procs.seen(record))
        for ordinal in range(len(endpoints)):
            if self._procs.alive(name, ordinal, ports[ordinal]):
                continue
            restarts = self._procs.number(name, ordinal, "restarts")
            if self._procs.number(name, ordinal, "pid"):
                self._procs.record_exit(name, ordinal)
                if restarts >= MAX_RESTARTS:
                    down = health.not_ready(endpoints, timeout=self.probe_timeout)
                    servers = self._procs.states(record, set(down))
                    self._procs.remember(name, servers)
                    return self._give_up(record, Status(Phase.FAILED, endpoints, self._procs.failure(
                        name, servers[ordinal], f"exited {restarts + 1} times"), servers))
                log.warning("local fleet %s: server %s exited (%s); restarting it on port %s", name, ordinal,
                            self._procs.text(name, ordinal, "reason"), ports[ordinal])
                (self._files.dir(name) / f"server-{ordinal}.restarts").write_text(str(restarts + 1))
            self._procs.spawn(record, ordinal)
        down = health.not_ready(endpoints, timeout=self.probe_timeout)
        servers = self._procs.states(record, set(down))
        self._procs.remember(name, servers)
        if not down:
            return Status(Phase.READY, endpoints, servers=servers)
        waited = time.time() - record["created_at"]
        if waited > spec.startup_seconds:
            first = next(s for s in servers if s.endpoint in down)
            return self._give_up(record, Status(Phase.FAILED, endpoints, self._procs.failure(
                name, first, f"not SERVING {waited:.0f}s after create (startup_seconds is "
                             f"{spec.startup_seconds}; raise it for a large graph)"), servers))
        return Status(Phase.UPDATING, endpoints, progress.summary(servers), servers)

    def _give_up(self, record: dict[str, Any], failed: Status) -> Status:
        """Free a FAILED fleet's servers at once: propeller sends DeleteTask only on abort, never for a
        failed task, so nothing else would stop them before expiry. The record, the logs and the
        message stay until a delete, a teardown or gc, and every later status answers the same FAILED.
        Caller holds the fleet's lock."""
        name = record["name"]
        write_json(self._files.dir(name) / _GIVEN_UP, {"message": failed.message})
        for ordinal, port in enumerate(self._procs.ports(record)):
            self._procs.stop(name, ordinal, port)
        stopped = "stopped: the fleet failed"
        self._procs.remember(name, [s if s.phase is ServerPhase.FAILED else
                              dataclasses.replace(s, phase=ServerPhase.PENDING, reason=stopped)
                              for s in failed.servers])
        log.warning("local fleet %s FAILED: its servers are stopped; its record stays until deleted", name)
        return failed

    def _given_up(self, name: str) -> str | None:
        try:
            return str(json.loads((self._files.dir(name) / _GIVEN_UP).read_text())["message"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _delete(self, name: str, owner: str | None = None) -> None:
        """Delete the fleet; with `owner`, only if its record (or tombstone) names that owner."""
        if self._files.dir(name).exists():
            with self._files.locked(name):
                if owner is not None:
                    record = self._files.record(name) or self._files.tombstoned(name)
                    if record is not None:
                        check_owner(name, record.get("owner"), owner)
                self._delete_locked(name)
        with self._mutex:
            self._started.discard(name)

    def _delete_locked(self, name: str, keep_lock: bool = False) -> None:
        """Tombstone, stop every server, remove the dir and (unless the caller goes on using it) the
        lock file. Caller holds the fleet's lock."""
        fleet, tombstone = self._files.dir(name) / "fleet.json", self._files.tombstone(name)
        with contextlib.suppress(FileNotFoundError):  # already tombstoned by a delete that died
            os.replace(fleet, tombstone)
        try:
            record: dict[str, Any] | None = dict(json.loads(tombstone.read_text()))
        except FileNotFoundError:
            record = None  # a create that died before writing fleet.json: no server was started
        if record is not None:
            for ordinal, port in enumerate(self._procs.ports(record)):
                self._procs.stop(name, ordinal, port)
        # Not ignore_errors: a dir left behind must make delete raise (the caller retries), and the
        # tombstone keeps the fleet ABSENT and unrestarted meanwhile.
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._files.dir(name))
        if not keep_lock:
            with contextlib.suppress(FileNotFoundError):  # we hold it: waiters re-lock (see locked)
                os.unlink(self._files.lock_path(name))
        with self._mutex:
            self._started.discard(name)

    def _ensure_reconciler(self) -> None:
        with self._mutex:
            if self._reconciler is not None or self._stop.is_set():
                return
            self._reconciler = threading.Thread(target=self._reconcile_forever, name="graphfleet-local",
                                                daemon=True)
            self._reconciler.start()

    def _reconcile_forever(self) -> None:
        while not self._stop.wait(RECONCILE_SECONDS):
            try:
                self.reconcile_once()
            except Exception:  # the loop must survive one bad fleet; the next round tries again
                log.exception("local fleet reconcile failed")

def _expires_at(record: dict[str, Any]) -> float:
    """A fleet's expiry: renewed (`expires_at`), else its creation plus its time to live."""
    spec = DataServiceSpec.from_custom(record["spec"])
    return float(record.get("expires_at") or record["created_at"] + spec.ttl_seconds)



def _fleet_record(record: dict[str, Any]) -> lifecycle.FleetRecord:
    held = record.get("leases")
    return lifecycle.FleetRecord(
        name=record["name"], owner=record.get("owner"), execution=record["execution"],
        expires_at=_expires_at(record), leases=None if held is None else dict(held),
        shape=leases.fleet_shape(record["spec"]), source=record)


class FleetFiles:
    """The state dir's records: each fleet's fleet.json (or its tombstone) and lock file, and the
    local `lifecycle.FleetStore` over them."""

    label = "local"

    def __init__(self, state_dir: Path, stop: Callable[[str], None]) -> None:
        self.state_dir = state_dir
        self._stop = stop  # delete a fleet whose lock the caller holds

    def dir(self, name: str) -> Path:
        # Every path of a fleet is built here: a name that is not a fleet name never reaches the disk.
        return self.state_dir / check_fleet_name(name)

    def tombstone(self, name: str) -> Path:
        return self.dir(name) / _TOMBSTONE

    def record(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.dir(name) / "fleet.json").read_text()))
        except FileNotFoundError:
            return None

    def records(self, include_deleting: bool = False) -> list[dict[str, Any]]:
        """Every fleet's record; with `include_deleting`, also those a delete has tombstoned."""
        found = []
        for fleet in sorted(d for d in self.state_dir.iterdir() if d.is_dir()):
            try:
                record = self.record(fleet.name)
            except InvalidFleetName:
                continue  # not a fleet of ours
            if record is None and include_deleting:
                record = self.tombstoned(fleet.name)
            if record is not None:
                found.append(record)
        return found

    def tombstoned(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.tombstone(name).read_text()))
        except FileNotFoundError:
            return None

    def locked(self, name: str) -> contextlib.AbstractContextManager[None]:
        return locked(self.lock_path(name))

    def drop_lock_if_gone(self, name: str) -> None:
        """Locking a fleet that a delete removed since it was listed made its lock file again: remove
        it, as that delete did (we hold it; waiters re-lock, see files.locked)."""
        if not self.dir(name).exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path(name))

    def lock_path(self, name: str) -> Path:
        return self.state_dir / f".{check_fleet_name(name)}.lock"


    def names(self) -> list[str]:
        """The fleet dirs, unread: gc reads each record once, when it comes to it."""
        return [d.name for d in sorted(self.state_dir.iterdir()) if d.is_dir() and is_fleet_name(d.name)]

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with self.locked(name):
            try:
                yield
            finally:
                self.drop_lock_if_gone(name)  # locking a fleet deleted meanwhile made its lock

    def read(self, name: str) -> lifecycle.FleetRecord | None:
        record = self.record(name)
        return None if record is None else _fleet_record(record)

    def reread(self, record: lifecycle.FleetRecord) -> lifecycle.FleetRecord | None:
        return self.read(record.name)

    def when(self, expires_at: float) -> float:
        return expires_at

    def put_lease(self, record: lifecycle.FleetRecord, holder: str, expires_at: float) -> None:
        data = record.source
        self._write(data, leases=leases.take(data.get("leases", {}), holder, expires_at, time.time()))

    def drop_lease(self, record: lifecycle.FleetRecord, holder: str) -> None:
        data = record.source
        if holder in data.get("leases", {}):
            self._write(data, leases=leases.live(leases.drop(data["leases"], holder), time.time()))

    def put_expiry(self, record: lifecycle.FleetRecord, expires_at: float) -> None:
        self._write(record.source, expires_at=expires_at)

    def stop(self, record: lifecycle.FleetRecord, owner: str | None) -> None:
        self._stop(record.name)

    def _write(self, data: dict[str, Any], **changes: Any) -> None:
        data.update(changes)
        write_json(self.dir(data["name"]) / "fleet.json", data)
