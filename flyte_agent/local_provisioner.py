"""Graph-engine fleets as local subprocesses on loopback: the `Provisioner` for development and tests.

One `python -m graph_engine.server` per ordinal on its own free 127.0.0.1 port. The state dir is the
only record, so any process can answer for any fleet:

    <state_dir>/<name>/fleet.json        the provision and the ports (written once, at create)
    <state_dir>/<name>/server-<i>.pid    "<pid>" of ordinal i's current process
    <state_dir>/<name>/server-<i>.restarts  how often ordinal i was restarted
    <state_dir>/<name>/server-<i>.log    its output
    <state_dir>/.<name>.lock             flock: one create, reconcile or delete of a fleet at a time

`status()` is level-triggered: it looks at the processes and ports and moves the fleet toward
"every ordinal serving" — a crashed server is restarted on the same port with the same ordinal, as
a StatefulSet would, up to `MAX_RESTARTS`. A background thread reconciles every fleet the same way
(Flyte stops polling once the fleet is ready) and deletes expired ones. When this process exits
(Ctrl-C, atexit) it deletes the fleets it started: nothing outlives the run.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graph_engine
from flyte_agent.provisioner import Phase, Provision, Status
from graph_engine import health
from infra.spec import DataServiceSpec

if TYPE_CHECKING:
    from flyte_agent.settings import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_RESTARTS = 5
RECONCILE_SECONDS = 2.0
STOP_SECONDS = 10.0
_LOG_TAIL_LINES = 5
# Importable `graph_engine` for the servers, wherever the connector runs from.
_PROJECT_ROOT = str(Path(graph_engine.__file__).resolve().parent.parent)


class LocalProvisioner:
    def __init__(self, settings: Settings) -> None:
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.probe_timeout = min(1.0, settings.ready_timeout_seconds)
        # Facts about this process only: the servers it is the parent of (to reap them) and the fleets
        # it started (to delete at exit). The fleets themselves are described by the state dir.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._started: set[str] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None
        atexit.register(self.close)

    # -- the Provisioner protocol -------------------------------------------------------------

    def create(self, provision: Provision) -> None:
        with self._locked(provision.name):
            if self._record(provision.name) is None:
                ports = self._free_ports(provision.spec.replicas)
                self._dir(provision.name).mkdir(parents=True, exist_ok=True)
                record = {"name": provision.name, "spec": provision.spec.to_custom(),
                          "owner": provision.owner, "execution": provision.execution,
                          "created_at": provision.created_at, "ports": ports}
                _write_json(self._dir(provision.name) / "fleet.json", record)
                with self._mutex:
                    self._started.add(provision.name)
                for ordinal in range(provision.spec.replicas):
                    self._spawn(record, ordinal)
        self._ensure_reconciler()

    def status(self, provision: Provision) -> Status:
        if self._record(provision.name) is None:
            return Status(Phase.ABSENT)
        with self._locked(provision.name):
            record = self._record(provision.name)
            if record is None:
                return Status(Phase.ABSENT)
            return self._reconcile(record)

    def delete(self, provision: Provision) -> None:
        self._delete(provision.name)

    def gc(self, now: float) -> list[str]:
        expired = []
        for record in self._records():
            spec = DataServiceSpec.from_custom(record["spec"])
            if now >= record["created_at"] + spec.ttl_seconds:
                self._delete(record["name"])
                expired.append(record["name"])
        return expired

    # -- local specifics -------------------------------------------------------------------------

    def endpoints(self, name: str) -> list[str]:
        record = self._record(name)
        return [] if record is None else [f"{HOST}:{p}" for p in record["ports"]]

    def pids(self, name: str) -> list[int]:
        """The recorded server process of each ordinal (0 if none), for inspection and tests."""
        record = self._record(name)
        return [] if record is None else [self._pid(name, i) for i in range(len(record["ports"]))]

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

    def _reconcile(self, record: dict[str, Any]) -> Status:
        name = record["name"]
        spec = DataServiceSpec.from_custom(record["spec"])
        endpoints = [f"{HOST}:{p}" for p in record["ports"]]
        for ordinal in range(len(endpoints)):
            if self._alive(self._pid(name, ordinal), record["ports"][ordinal]):
                continue
            restarts = self._restarts(name, ordinal)
            if restarts >= MAX_RESTARTS:
                return Status(Phase.FAILED, endpoints, (
                    f"graph-engine server {ordinal} of {name} exited {restarts + 1} times; last output:\n"
                    f"{self._log_tail(name, ordinal)}\n"
                    "fix the cause above (graph URI, partitions, memory) and run the task again"))
            if self._pid(name, ordinal):
                log.warning("local fleet %s: server %s exited; restarting it on port %s",
                            name, ordinal, record["ports"][ordinal])
                (self._dir(name) / f"server-{ordinal}.restarts").write_text(str(restarts + 1))
            self._spawn(record, ordinal)
        down = health.not_ready(endpoints, timeout=self.probe_timeout)
        if not down:
            return Status(Phase.READY, endpoints)
        waited = time.time() - record["created_at"]
        if waited > spec.startup_seconds:
            return Status(Phase.FAILED, endpoints, (
                f"{', '.join(down)} not SERVING {waited:.0f}s after create (startup_seconds is "
                f"{spec.startup_seconds}); raise startup_seconds for a large graph or check the server "
                f"logs in {self._dir(name)}"))
        return Status(Phase.UPDATING, endpoints, f"loading: {', '.join(down)} not serving yet")

    def _delete(self, name: str) -> None:
        if not self._dir(name).exists():
            return
        with self._locked(name):
            record = self._record(name)
            if record is not None:
                for ordinal, port in enumerate(record["ports"]):
                    self._stop_server(self._pid(name, ordinal), port)
            shutil.rmtree(self._dir(name), ignore_errors=True)
        with self._mutex:
            self._started.discard(name)

    def _spawn(self, record: dict[str, Any], ordinal: int) -> None:
        name = record["name"]
        spec = DataServiceSpec.from_custom(record["spec"])
        argv = [sys.executable, "-m", "graph_engine.server", "--data-dir", str(spec.graph_uri),
                "--port", str(record["ports"][ordinal]), "--ordinal", str(ordinal),
                "--replicas", str(spec.replicas), "--partitions", str(spec.partitions), "--host", HOST]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        with open(self._dir(name) / f"server-{ordinal}.log", "ab") as out:
            # A new session: Ctrl-C in a terminal reaches the connector, which stops the servers itself.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        with self._mutex:
            self._children[proc.pid] = proc
        (self._dir(name) / f"server-{ordinal}.pid").write_text(str(proc.pid))

    def _stop_server(self, pid: int, port: int) -> None:
        if not self._alive(pid, port):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while self._alive(pid, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(pid, port):
            os.kill(pid, signal.SIGKILL)
            while self._alive(pid, port):
                time.sleep(0.05)

    def _alive(self, pid: int, port: int) -> bool:
        """Is `pid` still our server on `port`? Checks the command line, so a reused pid is not mistaken."""
        if pid <= 0:
            return False
        with self._mutex:
            child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:
                return True
            with self._mutex:
                self._children.pop(pid, None)
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return b"graph_engine.server" in cmdline and str(port).encode() in cmdline

    def _free_ports(self, count: int) -> list[int]:
        taken = {p for record in self._records() for p in record["ports"]}
        ports: list[int] = []
        sockets = []
        try:
            while len(ports) < count:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((HOST, 0))
                port = int(sock.getsockname()[1])
                if port not in taken:
                    ports.append(port)
        finally:
            for sock in sockets:
                sock.close()
        return ports

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
                self.gc(time.time())
                for record in self._records():
                    with self._locked(record["name"]):
                        if self._record(record["name"]) is not None:
                            self._reconcile(record)
            except Exception:  # the loop must survive one bad fleet; the next round tries again
                log.exception("local fleet reconcile failed")

    def _dir(self, name: str) -> Path:
        return self.state_dir / name

    def _record(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self._dir(name) / "fleet.json").read_text()))
        except FileNotFoundError:
            return None

    def _records(self) -> list[dict[str, Any]]:
        found = (self._record(d.name) for d in sorted(self.state_dir.iterdir()) if d.is_dir())
        return [r for r in found if r is not None]

    def _pid(self, name: str, ordinal: int) -> int:
        try:
            return int((self._dir(name) / f"server-{ordinal}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _restarts(self, name: str, ordinal: int) -> int:
        try:
            return int((self._dir(name) / f"server-{ordinal}.restarts").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _log_tail(self, name: str, ordinal: int) -> str:
        try:
            lines = (self._dir(name) / f"server-{ordinal}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with open(self.state_dir / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a record."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
