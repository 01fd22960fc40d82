"""Integrity: the manifest records every partition file's size and SHA-256, and a server refuses a
truncated or corrupt partition before opening its port (failed readiness), with a clear log line,
so the connector reports FAILED with the reason instead of serving a partial graph."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flyte_agent.local_provisioner import LocalProvisioner
from flyte_agent.provisioner import Phase, ServerPhase
from flyte_agent.settings import Settings
from graph_engine import health
from graph_engine.convert import convert
from graph_engine.store import filesystem, read_info
from tests.s3_server import moto_s3, s3_env
from tests.test_connector_grpc import pid_running
from tests.test_graph_server import free_port, ring_graph
from tests.test_local_provisioner import provision, wait_for


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(convert(ring_graph(), str(tmp_path_factory.mktemp("graph") / "ring"), partitions=2))


@pytest.fixture
def graph(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ring"
    shutil.copytree(pristine, copy)
    return copy


def _serve(graph: Path | str, ordinal: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run server `ordinal` of two; its exit code and output once it exits, or once ready (then stopped)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "graph_engine.server", "--data-dir", str(graph), "--port", str(port),
         "--ordinal", str(ordinal), "--replicas", "2", "--partitions", "2", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if health.check(f"127.0.0.1:{port}", timeout=0.5):
                proc.terminate()
                break
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return proc.returncode, out


def test_manifest_lists_every_partition_file_with_size_and_checksum(pristine: Path) -> None:
    files = read_info(str(pristine))["files"]
    on_disk = {p.name for p in pristine.iterdir()} - {"meta.json", "graphfleet.json"}
    assert set(files) == on_disk
    assert all(files[name]["size"] == (pristine / name).stat().st_size for name in on_disk)
    assert {files[name].get("partition") for name in on_disk if not name.endswith(".ids")} == {0, 1}


def test_a_corrupt_partition_is_refused_and_the_other_serves(graph: Path) -> None:
    data = graph / "node_features_1_0.data"
    raw = bytearray(data.read_bytes())
    raw[5] ^= 0xFF
    data.write_bytes(bytes(raw))
    code, out = _serve(graph, 1)
    assert code == 1
    assert f"partition file {graph}/node_features_1_0.data fails its checksum" in out
    assert "serving partitions" not in out
    code, out = _serve(graph, 0)  # partition 0 is intact
    assert code == 0 and "serving partitions [0] of 2" in out, out


def test_a_truncated_partition_is_refused(graph: Path) -> None:
    index = graph / "edge_0_0.index"
    size = index.stat().st_size
    with index.open("r+b") as f:
        f.truncate(size - 24)
    code, out = _serve(graph, 0)
    assert code == 1
    assert (f"partition file {graph}/edge_0_0.index is {size - 24} bytes, the manifest says {size} "
            "(truncated or overwritten); reconvert the graph") in out


def test_a_server_fetching_from_s3_checks_what_it_downloads(pristine: Path) -> None:
    with moto_s3(buckets=["graphs"], set_env=True) as endpoint:
        fs, _ = filesystem("s3://graphs")
        fs.put(str(pristine), "graphs/ring", recursive=True)
        env = {**os.environ, **s3_env(endpoint)}
        good = _serve("s3://graphs/ring", 0, env)
        assert good[0] == 0 and "serving partitions [0] of 2" in good[1], good[1]
        fs.pipe_file("graphs/ring/node_0_0.map", b"\0" * 20)
        code, out = _serve("s3://graphs/ring", 0, env)
    assert code == 1
    assert "partition file s3://graphs/ring/node_0_0.map is 20 bytes, the manifest says" in out


def test_the_connector_reports_failed_with_the_reason_and_frees_the_fleet(graph: Path,
                                                                        tmp_path: Path) -> None:
    """Server 1's partition is corrupt, server 0's is not: the fleet fails naming the reason, and
    server 0 is stopped then (propeller sends no DeleteTask for a failed task), not at expiry."""
    (graph / "neighbors_1_0.index").write_bytes(b"")
    provisioner = LocalProvisioner(Settings(state_dir=tmp_path / "state"))
    try:
        fleet = provision(str(graph), replicas=2)
        provisioner.create(fleet)
        wait_for(lambda: provisioner.status(fleet), Phase.FAILED, timeout=120)
        failed = provisioner.status(fleet)
        assert "neighbors_1_0.index is 0 bytes, the manifest says" in failed.message
        assert not any(pid_running(pid) for pid in provisioner.pids(fleet.name))
        provisioner.reconcile_once()  # the reconciler restarts nothing of a failed fleet
        assert not any(pid_running(pid) for pid in provisioner.pids(fleet.name))
        again = provisioner.status(fleet)
        assert (again.phase, again.message) == (Phase.FAILED, failed.message)
        assert [s.phase for s in again.servers] == [ServerPhase.PENDING, ServerPhase.FAILED]  # 0 stopped
        assert [f.phase for f in provisioner.fleets()] == [Phase.FAILED]
        provisioner.delete(fleet.name, fleet.owner)
        assert provisioner.status(fleet).phase is Phase.ABSENT
    finally:
        provisioner.close()
