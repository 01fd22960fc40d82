"""Issue 8 item 8: a lock held by a live connector replica is never broken; a dead one's is, quickly,
and only its own lock file (the self-managed state backend's `cancel` removes every lock of a stack)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from flyte_agent.provisioner import Phase
from flyte_agent.pulumi_provisioner import PulumiProvisioner
from flyte_agent.replicas import Heartbeat, LockFile, holder_dead
from tests import fake_pulumi
from tests.hostnames import needs_uts, under_hostname
from tests.test_pulumi_provisioner import ROOT, WAIT_LIMIT, backend, make, provision, settings, wait  # noqa: F401

# Heartbeat seconds in these tests: a replica is judged dead after 4 missed beats (8 s), which a loaded
# machine's scheduling delays stay well below.
BEAT = 2.0


def test_only_a_dead_holders_lock_is_dead() -> None:
    me = Heartbeat("pod-b", 1, started=1000.0, beat=2000.0)
    beats = {"pod-a": Heartbeat("pod-a", 7, started=1000.0, beat=1995.0)}

    def dead(host: str, taken_at: float, now: float = 2000.0, alive: bool = True) -> bool:
        return holder_dead(LockFile("x.json", host, 42, taken_at), beats, me, now, stale_after=40,
                           unknown_after=1800, cli_alive=lambda pid: alive)

    assert not dead("pod-a", taken_at=1100.0, now=2030.0)  # beating: never broken, however old the lock
    assert dead("pod-a", taken_at=1100.0, now=2036.0)  # 41 s without a beat: the replica is gone
    assert dead("pod-a", taken_at=900.0)  # taken before pod-a's process started: it restarted since
    assert not dead("pod-b", taken_at=1100.0)  # this host, its CLI runs
    assert dead("pod-b", taken_at=1999.0, alive=False)  # this host, its CLI is gone
    assert not dead("laptop", taken_at=1000.0)  # no heartbeat (an operator): the operation bound
    assert dead("laptop", taken_at=100.0)


_REPLICA = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_pulumi_provisioner import provision
    from flyte_agent.pulumi_provisioner import PulumiProvisioner
    from flyte_agent.settings import Settings
    provisioner = PulumiProvisioner(Settings.model_validate_json({settings!r}))
    provisioner.create(provision({name!r}))
    time.sleep(600)
""")


def replica_holding(backend: tuple[str, Path], hostname: str,  # noqa: F811
                    name: str) -> subprocess.Popen[bytes]:
    """A connector replica on its own host whose `up` of `name` hangs while holding the stack's lock."""
    url, _ = backend
    fake_pulumi.script_faults(url, name, up=["hang"])
    script = _REPLICA.format(root=str(ROOT), name=name,
                             settings=settings(backend, heartbeat_seconds=BEAT).model_dump_json())
    child = subprocess.Popen(under_hostname(hostname, [sys.executable, "-c", script]), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT_LIMIT
    while [lock["hostname"] for lock in fake_pulumi.locks(url, name)] != [hostname]:
        if child.poll() is not None or time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            raise AssertionError(f"replica {hostname} never took {name}'s lock: "
                                 f"{child.stderr.read().decode() if child.stderr else ''}")
        time.sleep(0.1)
    return child


def poll_until(check: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < WAIT_LIMIT, what
        time.sleep(0.2)
    return time.monotonic() - start


@needs_uts
def test_a_live_replicas_lock_survives_and_a_dead_replicas_is_recovered_in_seconds(
        backend: tuple[str, Path], make: Callable[..., PulumiProvisioner]) -> None:  # noqa: F811
    url, _ = backend
    live = replica_holding(backend, "replica-a", "fleet-live")
    dead = replica_holding(backend, "replica-c", "fleet-dead")
    os.killpg(dead.pid, signal.SIGKILL)  # the pod is gone: the connector and its CLI, no clean-up
    dead.wait(timeout=30)
    try:
        here = make(heartbeat_seconds=BEAT)  # this process is replica B, on this machine's hostname
        # The dead replica's up is taken over once its heartbeat is 4 beats old: seconds, not 45 min.
        assert wait(here, provision("fleet-dead"), {Phase.READY, Phase.FAILED}).phase is Phase.READY
        # The live replica keeps its lock through as many of B's reads as B likes, long after the
        # heartbeat window, and its `up` is still the one running.
        fake_pulumi.script_faults(url, "fleet-live", up=["ok"])
        deadline = time.monotonic() + 4 * BEAT + 4  # past the window that judges a replica dead
        while time.monotonic() < deadline:
            here.status(provision("fleet-live"))
            time.sleep(0.5)
        assert [lock["hostname"] for lock in fake_pulumi.locks(url, "fleet-live")] == ["replica-a"]
        assert live.poll() is None
        # A dead holder's lock beside the live one (a race `cancel` loses: it removes both): B removes
        # only the dead one, by its file.
        write_dead_lock(url, "fleet-live", "replica-c")

        def holders() -> list[str]:
            here.status(provision("fleet-live"))
            return sorted(lock["hostname"] for lock in fake_pulumi.locks(url, "fleet-live"))

        poll_until(lambda: len(holders()) < 2, "the dead lock beside the live one was never removed")
        assert holders() == ["replica-a"], "the live replica's lock went with the dead one's"
        assert not any(call[0] == "cancel" for call in fake_pulumi.calls(url))
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait(timeout=30)
        # Its hanging CLI runs in a session of its own (the connector interrupts it by group); a pod's
        # death would take it too, so the test does not leave it behind.
        for lock in fake_pulumi.locks(url, "fleet-live"):
            if lock["hostname"] == "replica-a":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(lock["pid"], signal.SIGKILL)


def write_dead_lock(url: str, stack: str, hostname: str) -> None:
    """A lock file as a CLI killed two hours ago on `hostname` left it (pulumi diy/lock.go's fields),
    named to list first."""
    folder = fake_pulumi.lock_dir(url, stack)
    (folder / f"00000000-{uuid.uuid4()}.json").write_text(json.dumps({
        "pid": 999_999, "username": "graphfleet", "hostname": hostname,
        "timestamp": datetime.fromtimestamp(time.time() - 7200, UTC).isoformat()}))
