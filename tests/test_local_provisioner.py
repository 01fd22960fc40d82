"""The local provisioner: subprocess fleets on loopback, found through the state dir alone."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flyte_agent.local_provisioner import MAX_RESTARTS, LocalProvisioner
from flyte_agent.provisioner import InvalidFleetName, NotOwner, Phase, Provision, ServerPhase, Status
from flyte_agent.settings import Settings
from graph_engine import health
from graph_engine.convert import convert
from infra.spec import DataServiceSpec
from tests.polling import poll_until
from tests.test_connector_grpc import pid_running
from tests.test_graph_server import port_is_free, ring_graph

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def graph_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return convert(ring_graph(), str(tmp_path_factory.mktemp("graph") / "ring"), partitions=2)


@pytest.fixture
def provisioner(tmp_path: Path) -> Iterator[LocalProvisioner]:
    made = LocalProvisioner(Settings(state_dir=tmp_path / "state"))
    yield made
    made.close()


def provision(uri: str, name: str = "gf-test", partitions: int = 2, **spec: object) -> Provision:
    return Provision(name=name, spec=DataServiceSpec(graph_uri=uri, partitions=partitions, **spec),
                     owner="p/d", execution="p/d/e/n0", created_at=time.time())


def wait_for(check: Callable[[], Status], phase: Phase, timeout: float = 60) -> Status:
    seen: list[Status] = []

    def reached() -> Status | None:
        status = check()
        seen.append(status)
        assert status.phase is not Phase.FAILED or phase is Phase.FAILED, status.message
        return status if status.phase is phase else None

    return poll_until(reached, lambda: f"{phase} ({seen[-1].phase}: {seen[-1].message})", timeout)


def test_lifecycle_crash_restart_and_delete_freeing_ports(provisioner: LocalProvisioner,
                                                          graph_uri: str) -> None:
    fleet = provision(graph_uri, replicas=2)
    assert provisioner.status(fleet).phase is Phase.ABSENT
    provisioner.create(fleet)
    provisioner.create(fleet)  # a retried create adopts: still one server per ordinal
    ready = wait_for(lambda: provisioner.status(fleet), Phase.READY)
    assert len(ready.endpoints) == 2 and all(e.startswith("127.0.0.1:") for e in ready.endpoints)

    # Like a StatefulSet: a killed server comes back with the same ordinal on the same port.
    crashed = provisioner.pids(fleet.name)[1]
    os.kill(crashed, signal.SIGKILL)
    again = wait_for(lambda: provisioner.status(fleet), Phase.READY)
    assert again.endpoints == ready.endpoints
    assert provisioner.pids(fleet.name)[1] != crashed
    # Each server says what happened to it: what the Deck, progress and `graphfleet fleets` show.
    assert [(s.phase, s.restarts, s.reason) for s in again.servers] == [
        (ServerPhase.SERVING, 0, ""), (ServerPhase.SERVING, 1, "SIGKILL")]
    assert all(Path(s.log_path).is_file() and s.started_at > 0 for s in again.servers)

    pids = provisioner.pids(fleet.name)
    provisioner.delete(fleet.name, fleet.owner)
    assert provisioner.status(fleet).phase is Phase.ABSENT
    assert not any(pid_running(pid) for pid in pids)
    assert all(port_is_free(int(e.rsplit(":", 1)[1])) for e in ready.endpoints)
    provisioner.delete(fleet.name, fleet.owner)  # absent is success


def test_a_port_another_process_takes_before_the_server_binds_cannot_break_the_fleet(
        provisioner: LocalProvisioner, graph_uri: str) -> None:
    """Issue 8 item 12: ports were chosen at create and bound seconds later by the servers (after Python
    and DeepGNN start), so another process could take one meanwhile and the fleet failed on it."""
    fleet = provision(graph_uri, name="gf-taken", replicas=2)
    provisioner.create(fleet)
    intruders: list[socket.socket] = []
    tried: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        # Another process binds each port as soon as the fleet names it.
        while len(tried) < 2:
            assert time.monotonic() < deadline, "the fleet never named its ports"
            for endpoint in provisioner.endpoints(fleet.name):
                port = int(endpoint.rsplit(":", 1)[1])
                if port and port not in tried:
                    tried.add(port)
                    intruder = socket.socket()
                    try:
                        intruder.bind(("127.0.0.1", port))
                    except OSError:
                        intruder.close()  # the server holds it already
                    else:
                        intruders.append(intruder)
            time.sleep(0.01)
        ready = wait_for(lambda: provisioner.status(fleet), Phase.READY)
        assert {int(e.rsplit(":", 1)[1]) for e in ready.endpoints} == tried
        assert intruders == [], "another process could take a port the fleet named"
        assert health.not_ready(ready.endpoints, timeout=5) == []
    finally:
        for intruder in intruders:
            intruder.close()
        provisioner.delete(fleet.name, fleet.owner)


def servers_on(ports: list[int]) -> list[str]:
    """Every running graph-engine server holding one of `ports` (bound or listening), whoever started
    it (restarts included): by the sockets it has open, since a server started with `--port 0` does
    not name its port on its command line."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"graph_engine.server" not in cmdline:
                continue
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                found.append(f"{proc.name}: {b' '.join(cmdline).decode(errors='replace')}")
        except OSError:
            continue
    return found


def ready_pair(provisioner: LocalProvisioner, graph_uri: str) -> tuple[Provision, list[int], list[int]]:
    """A READY two-server fleet, its ports and its server pids."""
    fleet = provision(graph_uri, replicas=2)
    provisioner.create(fleet)
    ready = wait_for(lambda: provisioner.status(fleet), Phase.READY)
    return fleet, [int(e.rsplit(":", 1)[1]) for e in ready.endpoints], provisioner.pids(fleet.name)


def test_another_process_finds_and_tears_down_a_fleet(provisioner: LocalProvisioner, graph_uri: str) -> None:
    fleet, ports, pids = ready_pair(provisioner, graph_uri)
    # A second connector (restart, other replica) knows only the state dir.
    other = LocalProvisioner(Settings(state_dir=provisioner.state_dir))
    try:
        assert other.status(fleet).phase is Phase.READY
        other.delete(fleet.name, fleet.owner)
        # delete returns once the servers have exited, not merely started exiting: their ports are free.
        assert not any(pid_running(pid) for pid in pids), [Path(f"/proc/{p}/stat").read_text() for p in pids]
        assert all(port_is_free(port) for port in ports)
        assert other.status(fleet).phase is Phase.ABSENT
    finally:
        other.close()
    assert provisioner.status(fleet).phase is Phase.ABSENT
    # The original's supervisor sees its servers gone; a round of it must not take that for a crash.
    provisioner.reconcile_once()
    assert provisioner.status(fleet).phase is Phase.ABSENT
    assert servers_on(ports) == []
    assert not (provisioner.state_dir / fleet.name).exists()


def test_a_half_done_delete_is_never_undone_and_is_finished(provisioner: LocalProvisioner, graph_uri: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fleet, ports, pids = ready_pair(provisioner, graph_uri)

    # Another process's delete stops server 0, then dies before it stops server 1.
    other = LocalProvisioner(Settings(state_dir=provisioner.state_dir))
    stop_server = other._procs.stop

    def stop_one_then_die(name: str, ordinal: int, port: int) -> None:
        if ordinal == 1:
            raise OSError("the deleting process died here")
        stop_server(name, ordinal, port)

    monkeypatch.setattr(other._procs, "stop", stop_one_then_die)
    with pytest.raises(OSError, match="died here"):
        other.delete(fleet.name, fleet.owner)
    other.close()
    assert not pid_running(pids[0]) and pid_running(pids[1])

    # Being deleted is gone for everyone, and the stopped server is not a crash to restart.
    assert provisioner.status(fleet).phase is Phase.ABSENT
    assert servers_on(ports[:1]) == []
    # The next reconcile round finishes the delete.
    provisioner.reconcile_once()
    assert not pid_running(pids[1])
    assert servers_on(ports) == []
    assert not (provisioner.state_dir / fleet.name).exists()


def test_gc_deletes_only_expired_fleets(provisioner: LocalProvisioner, graph_uri: str) -> None:
    young, old = provision(graph_uri, name="gf-young"), provision(graph_uri, name="gf-old", ttl_seconds=300)
    provisioner.create(young)
    provisioner.create(old)
    assert provisioner.gc(time.time()) == []
    assert provisioner.gc(old.expires_at + 1) == ["gf-old"]
    assert provisioner.status(old).phase is Phase.ABSENT
    assert provisioner.status(young).phase is not Phase.ABSENT


def test_a_server_that_keeps_crashing_fails_with_its_output(provisioner: LocalProvisioner,
                                                            graph_uri: str) -> None:
    broken = provision(graph_uri, partitions=1)  # the graph has 2: every start exits at once
    provisioner.create(broken)
    failed = wait_for(lambda: provisioner.status(broken), Phase.FAILED, timeout=120)
    assert f"graph-engine server 0 of {broken.name} (127.0.0.1:" in failed.message
    assert f"exited {MAX_RESTARTS + 1} times (last exit: exit code" in failed.message
    # The last lines of the failing server's log, and where the rest of it is.
    assert "pass --partitions 2" in failed.message
    log = failed.servers[0].log_path
    assert Path(log).as_uri() in failed.message and "pass --partitions 2" in Path(log).read_text()
    assert failed.servers[0].phase is ServerPhase.FAILED


def test_releasing_an_execution_leaves_the_other_executions_fleets(provisioner: LocalProvisioner,
                                                                   graph_uri: str) -> None:
    def of(execution: str, name: str) -> Provision:
        return Provision(name=name, spec=DataServiceSpec(graph_uri=graph_uri, partitions=2),
                         owner="p/d", execution=execution, created_at=time.time())

    fleets = [of("p/d/run1/n0", "gf-run1-a"), of("p/d/run1/dn0-n2", "gf-run1-b"),
              of("p/d/run10/n0", "gf-run10"), of("p/prod/run1/n0", "gf-prod-run1")]
    for fleet in fleets:
        provisioner.create(fleet)
    pids = provisioner.pids("gf-run1-a") + provisioner.pids("gf-run1-b")

    assert sorted(provisioner.release_execution("p/d/run1")) == ["gf-run1-a", "gf-run1-b"]
    assert [provisioner.status(f).phase is Phase.ABSENT for f in fleets] == [True, True, False, False]
    assert not any(pid_running(pid) for pid in pids)
    assert provisioner.release_execution("p/d/run1") == []  # none left: still a success
    for partial in ("", "p/d", "p/d/", "p/d/run1/n0"):
        with pytest.raises(ValueError, match="is not project/domain/name; nothing was released"):
            provisioner.release_execution(partial)
    assert [provisioner.status(f).phase is Phase.ABSENT for f in fleets[2:]] == [False, False]


def test_a_failed_release_names_the_fleet_and_the_next_one_finishes(provisioner: LocalProvisioner,
                                                                    graph_uri: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    stuck, other = provision(graph_uri, name="gf-stuck"), provision(graph_uri, name="gf-other")
    for fleet in (stuck, other):
        provisioner.create(fleet)
    delete = provisioner._delete_locked

    def fail_on_stuck(name: str) -> None:
        if name == "gf-stuck":
            raise OSError("server 1 would not stop")
        delete(name)

    monkeypatch.setattr(provisioner, "_delete_locked", fail_on_stuck)
    with pytest.raises(RuntimeError, match=r"(?s)released 1 local fleet\(s\) of p/d/e but failed on 1.*"
                                           r"gf-stuck: server 1 would not stop"):
        provisioner.release_execution("p/d/e")
    assert provisioner.status(other).phase is Phase.ABSENT
    monkeypatch.setattr(provisioner, "_delete_locked", delete)
    assert provisioner.release_execution("p/d/e") == ["gf-stuck"]
    assert provisioner.status(stuck).phase is Phase.ABSENT


def test_a_delete_refuses_paths_and_other_owners_fleets_touches_nothing_and_leaves_nothing(
        provisioner: LocalProvisioner, graph_uri: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    state = provisioner.state_dir
    relative = os.path.relpath(victim, state)
    for bad in (relative, "/" + relative, f"../{victim.name}", str(victim), "..", "."):
        with pytest.raises(InvalidFleetName):
            provisioner.delete(bad, "p/d")
    assert (victim / "keep.txt").read_text() == "precious"

    fleet = provision(graph_uri, replicas=1)
    provisioner.create(fleet)
    wait_for(lambda: provisioner.status(fleet), Phase.READY)
    pids = provisioner.pids(fleet.name)
    for other in ("p/prod", "q/d", ""):
        with pytest.raises(NotOwner, match="nothing was touched"):
            provisioner.delete(fleet.name, other)
    assert provisioner.status(fleet).phase is Phase.READY and provisioner.pids(fleet.name) == pids
    # A running holder renews the fleet past its time to live; gc honours it; only the owner may.
    renewed = fleet.expires_at + 3600
    assert provisioner.renew(fleet.name, "p/d", renewed) == renewed
    assert provisioner.renew(fleet.name, "p/d", fleet.expires_at) == renewed  # never shortened
    with pytest.raises(NotOwner):
        provisioner.renew(fleet.name, "q/d", renewed + 1)
    assert provisioner.gc(fleet.expires_at + 1) == [] and provisioner.gc(renewed) == [fleet.name]
    provisioner.create(fleet)
    wait_for(lambda: provisioner.status(fleet), Phase.READY)
    provisioner.delete(fleet.name, "p/d")
    assert provisioner.status(fleet).phase is Phase.ABSENT
    assert list(state.iterdir()) == [], "a deleted fleet leaves nothing behind, not even its lock file"
