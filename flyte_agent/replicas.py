"""Which connector replicas are alive, and which stack locks only a dead one holds.

The state backend locks a stack by writing `.pulumi/locks/organization/<project>/<stack>/<uuid>.json`
= `{pid, username, hostname, timestamp}` (one uuid per CLI process); `Lock()` fails while any other file
is in that folder and `Unlock()` deletes its own (pulumi pkg/backend/diy/lock.go, v3.274.0). A lock says
nothing about whether its holder still runs: a CLI killed with its pod leaves its file for ever. And
`pulumi cancel` deletes every file in the folder (diy/backend.go CancelCurrentUpdate), so a replica that
"cancels a stale lock" also deletes a lock another replica took a moment ago.

So each replica keeps a heartbeat in the same state backend, `.graphfleet/replicas/<hostname>.json` =
`{hostname, pid, started, beat}`, rewritten every `interval` seconds, and a lock is broken only when its
holder is dead (`holder_dead`), by deleting that one lock file, never by `cancel`. A pod's hostname is
its name, so it names a replica; a restarted container keeps the name but gets a new `started`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import fsspec

from infra.names import name_hash

log = logging.getLogger(__name__)

_LOCKS = ".pulumi/locks/organization"
_BEATS = ".graphfleet/replicas"
_LEASES = ".graphfleet/leases"
_FILEBLOB_SIDECAR = ".attrs"  # gocloud.dev blob/fileblob attrs.go `attrsExt` (docs/external-contracts.md)


@dataclass(frozen=True)
class LockFile:
    """One lock file of a stack, as the CLI wrote it."""

    path: str
    hostname: str
    pid: int
    taken_at: float  # epoch seconds, the holder host's clock


@dataclass(frozen=True)
class Heartbeat:
    hostname: str
    pid: int
    started: float  # when this replica process started (epoch seconds, its host's clock)
    beat: float     # its last heartbeat


def holder_dead(lock: LockFile, beats: Mapping[str, Heartbeat], me: Heartbeat, now: float,
                stale_after: float, unknown_after: float, cli_alive: Callable[[int], bool]) -> bool:
    """Whether nobody will ever release `lock`.

    - Taken on this host: dead once no pulumi process has its pid (`cli_alive`; a pid reused by another
      program after a container restart does not count).
    - Taken on another replica's host: dead if that replica's heartbeat is older than `stale_after`, or
      the lock predates the replica's current process (it restarted; its CLIs died with the old one).
      A live replica's lock is never dead, however old.
    - Taken on a host with no heartbeat (an operator's `pulumi` run by hand): only after
      `unknown_after`, the longest operation any replica allows.
    """
    if lock.hostname == me.hostname:
        return not cli_alive(lock.pid)
    beat = beats.get(lock.hostname)
    if beat is None:
        return now - lock.taken_at > unknown_after
    return now - beat.beat > stale_after or lock.taken_at < beat.started


class StateFiles:
    """The few files graphfleet reads and writes beside Pulumi's in the state backend."""

    def __init__(self, backend_url: str) -> None:
        self.fs, self.root = _filesystem(backend_url)

    def lock_files(self, project: str, stack: str) -> list[LockFile]:
        folder = f"{self.root}/{_LOCKS}/{project}/{stack}"
        found = []
        for path in self._ls(folder):
            if not path.endswith(".json"):
                continue
            try:
                raw = json.loads(self.fs.cat_file(path))
                found.append(LockFile(path=path, hostname=str(raw["hostname"]), pid=int(raw["pid"]),
                                      taken_at=datetime.fromisoformat(raw["timestamp"]).timestamp()))
            except FileNotFoundError:
                continue  # released between the listing and the read
            except (ValueError, KeyError, TypeError) as err:
                log.warning("unreadable lock file %s left alone: %s", path, err)
        return found

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def remove_lock(self, lock: LockFile) -> None:
        """Delete a lock file as the CLI's own unlock does: on a `file://` state backend with the attributes
        sidecar gocloud's fileblob writes beside it (`<uuid>.json.attrs`), which would otherwise stay."""
        self.remove(lock.path)
        if "file" in self.fs.protocol:
            self.remove(lock.path + _FILEBLOB_SIDECAR)

    def heartbeats(self) -> dict[str, Heartbeat]:
        beats = {}
        for path in self._ls(f"{self.root}/{_BEATS}"):
            try:
                beat = Heartbeat(**json.loads(self.fs.cat_file(path)))
            except (FileNotFoundError, ValueError, TypeError) as err:
                log.debug("heartbeat %s skipped: %s", path, err)
                continue
            beats[beat.hostname] = beat
        return beats

    def write_heartbeat(self, beat: Heartbeat) -> None:
        folder = f"{self.root}/{_BEATS}"
        self.fs.makedirs(folder, exist_ok=True)
        self.fs.pipe_file(f"{folder}/{beat.hostname}.json", json.dumps(beat.__dict__).encode())

    # Shared fleets' leases, one object per holder (`.graphfleet/leases/<stack>/<hash>.json`): the stack's
    # tags are one file the CLI rewrites whole, so two holders writing at once lose one's lease tag; a
    # write here touches only its own holder's object (flyte_agent/leases.py, docs/design.md).
    def leases(self, stack: str) -> dict[str, float]:
        """Every lease object of the stack: holder -> expiry (unreadable ones skipped)."""
        found = {}
        for path in self._ls(f"{self.root}/{_LEASES}/{stack}"):
            try:
                raw = json.loads(self.fs.cat_file(path))
                found[str(raw["holder"])] = float(raw["expires_at"])
            except FileNotFoundError:
                continue  # dropped between the listing and the read
            except (ValueError, KeyError, TypeError) as err:
                log.warning("unreadable lease %s skipped: %s", path, err)
        return found

    def put_lease(self, stack: str, holder: str, expires_at: float) -> None:
        folder = f"{self.root}/{_LEASES}/{stack}"
        self.fs.makedirs(folder, exist_ok=True)
        self.fs.pipe_file(f"{folder}/{name_hash(holder)}.json",
                          json.dumps({"holder": holder, "expires_at": expires_at}).encode())

    def drop_lease(self, stack: str, holder: str) -> None:
        self.remove(f"{self.root}/{_LEASES}/{stack}/{name_hash(holder)}.json")

    def drop_leases(self, stack: str) -> None:
        for path in self._ls(f"{self.root}/{_LEASES}/{stack}"):
            self.remove(path)

    def _ls(self, folder: str) -> list[str]:
        try:
            return [str(p) for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []


class Liveness:
    """This replica's heartbeat (a daemon thread) and the lock-breaking rule applied to a stack."""

    def __init__(self, state_files: StateFiles, interval: float, clock: Callable[[], float]) -> None:
        self.state_files = state_files
        self.interval = interval
        self.stale_after = 4 * interval  # three missed beats, and a margin for clock skew
        self._clock = clock
        now = clock()
        self.me = Heartbeat(hostname=socket.gethostname(), pid=os.getpid(), started=now, beat=now)
        self._stop = threading.Event()
        self.state_files.write_heartbeat(self.me)  # before any CLI this process starts takes a lock
        self._thread = threading.Thread(target=self._beat, name="graphfleet-heartbeat", daemon=True)
        self._thread.start()

    def settle(self, project: str, stack: str, unknown_after: float) -> LockFile | None:
        """Settle the stack's locks: delete the lock files whose holders are dead (by `holder_dead`, each
        by its own file, never `cancel`) and return a lock whose holder is alive, if any (None: the stack
        is free). The one step every path that meets a lock takes: a status read, a retried `up`, a
        destroy. `unknown_after`: the age at which a lock from a host with no heartbeat counts as dead."""
        held = self.state_files.lock_files(project, stack)
        if not held:
            return None
        beats, now = self.state_files.heartbeats(), self._clock()
        live = None
        for lock in held:
            if holder_dead(lock, beats, self.me, now, self.stale_after, unknown_after, cli_alive):
                log.warning("stack %s: removing the lock of a dead holder (pid %s on %s)", stack, lock.pid,
                            lock.hostname)
                self.state_files.remove_lock(lock)
            elif live is None:
                live = lock
        return live

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.state_files.write_heartbeat(Heartbeat(self.me.hostname, self.me.pid, self.me.started,
                                                       self._clock()))
            except Exception:  # noqa: BLE001 - a missed beat is retried; the thread must live on
                log.exception("heartbeat write failed")


def pid_alive(pid: int) -> bool:
    """A running process (a zombie, dead but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cli_alive(pid: int) -> bool:
    """A running pulumi CLI with this pid (its command line names pulumi)."""
    if not pid_alive(pid):
        return False
    try:
        return b"pulumi" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # it exists and we cannot look: assume it is the holder


def _filesystem(backend_url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec over the state backend the CLI uses: `file:///path` or
    `s3://bucket?endpoint=host:port&disableSSL=true&s3ForcePathStyle=true&region=r` (gocloud's s3 URL
    options, which the CLI's diy backend opens), with the same AWS credentials from the environment."""
    parts = urlsplit(backend_url)
    if parts.scheme == "file":
        path = Path(os.path.expanduser(backend_url.removeprefix("file://"))).resolve()
        return fsspec.filesystem("file"), str(path)
    if parts.scheme == "s3":
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        client: dict[str, str] = {}
        if "endpoint" in query:
            scheme = "http" if query.get("disableSSL", "").lower() == "true" else "https"
            endpoint = query["endpoint"]
            client["endpoint_url"] = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
        if "region" in query:
            client["region_name"] = query["region"]
        fs = fsspec.filesystem("s3", client_kwargs=client, skip_instance_cache=True)
        return fs, f"{parts.netloc}{parts.path}".rstrip("/")
    raise ValueError(f"backend_url: {backend_url!r} is not a self-managed state backend (file:// or s3://)")
