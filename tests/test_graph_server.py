"""The graph-engine entry point over real gRPC: load, health, sampling, clean SIGTERM, clear errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from graph_engine import health
from graph_engine.convert import convert
from graph_engine.datasets import Graph, canonical_edges

NODES = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ring_graph() -> Graph:
    """NODES nodes in a ring; node i has features [i, 1], so a lookup shows which server answered."""
    features = np.stack([np.arange(NODES, dtype=np.float32), np.ones(NODES, dtype=np.float32)], axis=1)
    ids = np.arange(NODES, dtype=np.int64)
    edges = canonical_edges(np.stack([ids, (ids + 1) % NODES], axis=1), NODES)
    return Graph("ring", features, (ids % 2).astype(np.int64), edges, ids[:10], ids[10:15], ids[15:], 2)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(convert(ring_graph(), str(tmp_path_factory.mktemp("graph") / "ring"), partitions=2))


def start(graph: Path, port: int, ordinal: int, replicas: int, partitions: int = 2) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "graph_engine.server", "--data-dir", str(graph), "--port", str(port),
         "--ordinal", str(ordinal), "--replicas", str(replicas), "--partitions", str(partitions),
         "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def fleet(graph: Path) -> Iterator[tuple[list[subprocess.Popen[str]], list[str]]]:
    ports = [free_port(), free_port()]
    procs = [start(graph, port, i, 2) for i, port in enumerate(ports)]
    try:
        yield procs, [f"127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def test_two_servers_serve_the_whole_graph_and_exit_cleanly_on_sigterm(fleet) -> None:
    from deepgnn.graph_engine.snark.client import DistributedGraph

    procs, endpoints = fleet
    health.wait_ready(endpoints, timeout=60)
    client = DistributedGraph(endpoints)
    try:
        features = client.node_features(np.arange(NODES), np.array([[0, 2]]), np.float32)
        # Every node's feature comes back: both shards are served, none double-counted.
        assert features[:, 0].tolist() == [float(i) for i in range(NODES)]
        assert features[:, 1].tolist() == [1.0] * NODES
        _, _, _, counts = client.neighbors(np.arange(NODES), np.array([0]))
        assert counts.tolist() == [2] * NODES
    finally:
        client.reset()

    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert "serving partitions [0] of 2" in outputs[0]
    assert "serving partitions [1] of 2" in outputs[1]
    assert all(port_is_free(int(e.rsplit(":", 1)[1])) for e in endpoints)
    assert not health.check(endpoints[0], timeout=0.5)


def test_a_taken_port_is_refused_instead_of_shared(graph: Path, fleet) -> None:
    procs, endpoints = fleet
    health.wait_ready(endpoints, timeout=60)
    intruder = start(graph, int(endpoints[0].rsplit(":", 1)[1]), 0, 2)
    out = intruder.communicate(timeout=60)[0]
    assert intruder.returncode == 1
    assert "already in use" in out and "pick a free port" in out


@pytest.mark.parametrize(("args", "expected"), [
    (["--partitions", "1", "--replicas", "1"], "pass --partitions 2"),
    (["--replicas", "3"], "--replicas/--partitions: replicas (3) exceeds partitions (2)"),
    (["--ordinal", "2"], "--ordinal must be in 0..1"),
])
def test_bad_arguments_fail_fast_naming_the_flag(graph: Path, args: list[str], expected: str) -> None:
    base = {"--data-dir": str(graph), "--port": str(free_port()), "--ordinal": "0", "--replicas": "2",
            "--partitions": "2", "--host": "127.0.0.1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [x for kv in base.items() for x in kv]
    proc = subprocess.run([sys.executable, "-m", "graph_engine.server", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert expected in proc.stderr


def test_a_missing_graph_is_an_error_not_a_native_abort(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "graph_engine.server", "--data-dir", str(tmp_path / "nope"),
         "--port", str(free_port()), "--ordinal", "0", "--replicas", "1", "--partitions", "1",
         "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no meta.json" in proc.stderr


def test_wait_ready_names_the_endpoints_that_are_down() -> None:
    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(health.EndpointsNotReady, match=down) as info:
        health.wait_ready([down], timeout=0.5)
    assert info.value.endpoints == [down]
