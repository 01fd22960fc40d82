"""The graph-engine server processes of local fleets: start, watch and stop them, and read their files.

One `python -m graph_engine.server` per ordinal, on a free 127.0.0.1 port its server chooses and
reports (flyte_agent/local_provisioner.py describes the whole state dir). Per server, in its fleet's
dir: `server-<i>.port`, `.pid`, `.start` (pid and start time name one process for its whole life),
`.restarts`, `.reason` (why it last exited) and `.log`; `servers.json` is what the last reconcile saw.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import graph_engine
from flyte_agent.executions import proc_stat
from flyte_agent.files import write_json
from flyte_agent.provisioner import ServerPhase, ServerState, check_fleet_name
from infra.spec import DataServiceSpec

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_RESTARTS = 5
STOP_SECONDS = 10.0
_LOG_TAIL_LINES = 5
# Importable `graph_engine` for the servers, wherever the connector runs from.
_PROJECT_ROOT = str(Path(graph_engine.__file__).resolve().parent.parent)


class ServerProcesses:
    """The servers of every fleet under `state_dir`; which of them are this process's children (to
    reap them and learn their exit status) is the only thing held in memory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}  # children that exited, until their exit is recorded
        self._mutex = threading.Lock()

    def _dir(self, name: str) -> Path:
        # Every path of a fleet is built from a checked name: anything else never reaches the disk.
        return self.state_dir / check_fleet_name(name)

    def remember(self, name: str, servers: list[ServerState]) -> None:
        seen = [{"phase": s.phase.value, "restarts": s.restarts, "reason": s.reason} for s in servers]
        path = self._dir(name) / "servers.json"
        try:
            if json.loads(path.read_text()) == {"servers": seen}:
                return
        except (FileNotFoundError, ValueError):
            pass
        write_json(path, {"servers": seen})

    def seen(self, record: dict[str, Any]) -> list[ServerState]:
        """Each server as the last reconcile saw it (PENDING before the first)."""
        try:
            seen = json.loads((self._dir(record["name"]) / "servers.json").read_text())["servers"]
        except (FileNotFoundError, ValueError, KeyError):
            seen = []
        servers = []
        for ordinal, port in enumerate(self.ports(record)):
            last: dict[str, Any] = (seen[ordinal] if ordinal < len(seen)
                                    else {"phase": "pending", "restarts": 0, "reason": ""})
            servers.append(ServerState(
                ordinal=ordinal, endpoint=f"{HOST}:{port}", phase=ServerPhase(last["phase"]),
                restarts=int(last["restarts"]), reason=str(last["reason"]),
                started_at=_started_at(self.number(record["name"], ordinal, "start")),
                log_path=str(self._dir(record["name"]) / f"server-{ordinal}.log")))
        return servers

    def states(self, record: dict[str, Any], down: set[str]) -> list[ServerState]:
        """Each server's state from its files and whether its endpoint answered."""
        name, servers = record["name"], []
        for ordinal, port in enumerate(self.ports(record)):
            endpoint, restarts = f"{HOST}:{port}", self.number(name, ordinal, "restarts")
            if endpoint not in down:
                phase = ServerPhase.SERVING
            elif restarts >= MAX_RESTARTS and not self.alive(name, ordinal, port):
                phase = ServerPhase.FAILED
            else:
                phase = ServerPhase.RESTARTING if restarts else ServerPhase.LOADING
            started = _started_at(self.number(name, ordinal, "start"))
            servers.append(ServerState(
                ordinal=ordinal, endpoint=endpoint, phase=phase, restarts=restarts,
                reason=self.text(name, ordinal, "reason") if restarts else "",
                started_at=started, log_path=str(self._dir(name) / f"server-{ordinal}.log")))
        return servers

    def failure(self, name: str, server: ServerState, what: str) -> str:
        """The FAILED message: which server, why, and the last lines of its log (and where the rest is)."""
        last = f" (last exit: {server.reason})" if server.reason else ""
        return (f"graph-engine server {server.ordinal} of {name} ({server.endpoint}) {what}{last}; "
                f"last lines of its log {Path(server.log_path).as_uri()}:\n"
                f"{self.log_tail(name, server.ordinal)}\n"
                "fix the cause above (graph URI, partitions, memory) and run the task again")

    def record_exit(self, name: str, ordinal: int) -> None:
        """Write why ordinal's last process ended: its exit status when it was our child, else unknown."""
        pid = self.number(name, ordinal, "pid")
        with self._mutex:
            code = self._exit_codes.pop(pid, None)
        if code is None:
            reason = "exited"  # another process's child: its status went to that parent
        elif code < 0:
            reason = signal.Signals(-code).name
        else:
            reason = f"exit code {code}"
        (self._dir(name) / f"server-{ordinal}.reason").write_text(reason)

    def spawn(self, record: dict[str, Any], ordinal: int) -> None:
        name = record["name"]
        spec = DataServiceSpec.from_custom(record["spec"])
        argv = [sys.executable, "-m", "graph_engine.server", "--data-dir", str(spec.graph_uri),
                # A restart comes back on the port its ordinal holds (clients have the endpoint); the
                # first start takes any free one and reports it.
                "--port", str(self.number(name, ordinal, "port")),
                "--port-file", str(self._dir(name) / f"server-{ordinal}.port"), "--ordinal", str(ordinal),
                "--replicas", str(spec.replicas), "--partitions", str(spec.partitions), "--host", HOST,
                *spec.args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        with open(self._dir(name) / f"server-{ordinal}.log", "ab") as out:
            # A new session: Ctrl-C in a terminal reaches the connector, which stops the servers itself.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        with self._mutex:
            self._children[proc.pid] = proc
        # The start time is set at fork, so it is already final; our unreaped child cannot be gone.
        started = proc_stat(proc.pid)
        (self._dir(name) / f"server-{ordinal}.start").write_text(str(started[1] if started else 0))
        (self._dir(name) / f"server-{ordinal}.pid").write_text(str(proc.pid))

    def stop(self, name: str, ordinal: int, port: int) -> None:
        """SIGTERM ordinal's server, SIGKILL after STOP_SECONDS; return once it has exited."""
        pid = self.number(name, ordinal, "pid")
        if pid <= 0:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            # Checked after opening: if the pid was reused before pidfd_open, this says no; if it
            # says yes, the pidfd names our server and no later reuse can redirect the signals.
            if not self.alive(name, ordinal, port):
                return
            for sig, timeout in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, None)):
                try:
                    signal.pidfd_send_signal(pidfd, sig)
                except ProcessLookupError:
                    break  # exited already (a zombie or reaped)
                # A pidfd polls readable only when the whole process has exited (exit_state set),
                # after the kernel closed its files and sockets: the port is free again.
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                if poller.poll(None if timeout is None else int(timeout * 1000)):
                    break
                log.warning("local fleet %s: server %s (pid %s) ignored SIGTERM for %ss; killing it",
                            name, ordinal, pid, timeout)
        finally:
            os.close(pidfd)
        self.reap()
        with self._mutex:  # stopped, not crashed: no exit to record
            self._exit_codes.pop(pid, None)

    def alive(self, name: str, ordinal: int, port: int) -> bool:
        """Is ordinal's recorded server still running (exiting counts: it still holds its port)?

        Not by its command line: the kernel empties /proc/<pid>/cmdline once an exiting process has
        released its memory, while it still holds its files and port; a delete that waited on that
        returned before the server had exited. The recorded start time identifies the process (and
        rules out a reused pid) until it is a zombie."""
        pid = self.number(name, ordinal, "pid")
        if pid <= 0:
            return False
        with self._mutex:
            child = self._children.get(pid)
        if child is not None:  # our unreaped child: the pid cannot have been reused
            if child.poll() is None:
                return True
            self._forget_child(pid, child)
            return False
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        start = self.number(name, ordinal, "start")
        if start:
            return stat[1] == start
        # Recorded before start times were: the command line, good while the server is not exiting.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"graph_engine.server" in cmdline and str(port).encode() in cmdline

    def reap(self) -> None:
        """Collect exited children, e.g. servers another process stopped: no zombies accumulate."""
        with self._mutex:
            children = list(self._children.items())
        for pid, child in children:
            if child.poll() is not None:
                self._forget_child(pid, child)

    def _forget_child(self, pid: int, child: subprocess.Popen[bytes]) -> None:
        with self._mutex:
            if self._children.pop(pid, None) is not None and child.returncode is not None:
                self._exit_codes[pid] = child.returncode

    def ports(self, record: dict[str, Any]) -> list[int]:
        """Each ordinal's port as its server reported it; 0 until that server has bound one."""
        replicas = DataServiceSpec.from_custom(record["spec"]).replicas
        return [self.number(record["name"], i, "port") for i in range(replicas)]

    def endpoints(self, record: dict[str, Any]) -> list[str]:
        # `127.0.0.1:0` (never SERVING) stands for a server that has not bound its port yet.
        return [f"{HOST}:{port}" for port in self.ports(record)]

    def number(self, name: str, ordinal: int, kind: str) -> int:
        """A server's recorded pid, start time or restart count; 0 when not (or no longer) recorded."""
        try:
            return int((self._dir(name) / f"server-{ordinal}.{kind}").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def text(self, name: str, ordinal: int, kind: str) -> str:
        try:
            return (self._dir(name) / f"server-{ordinal}.{kind}").read_text()
        except FileNotFoundError:
            return ""

    def log_tail(self, name: str, ordinal: int) -> str:
        try:
            lines = (self._dir(name) / f"server-{ordinal}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _started_at(start_ticks: int) -> float:
    """Epoch seconds of a process start time given in clock ticks since boot (0: unknown)."""
    if not start_ticks:
        return 0.0
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return 0.0
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
