"""Server memory and scratch from partition sizes: the plain formula, and its calibration held
against the RSS of a real graph-engine server that has touched its whole graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from graph_engine import health, sizing
from graph_engine.convert import convert
from graph_engine.datasets import synthetic
from graph_engine.store import read_info
from tests.test_graph_server import free_port

MIB = sizing.MIB


def manifest(sizes: dict[int, int]) -> dict[str, object]:
    files = {f"node_features_{p}_0.data": {"size": size, "sha256": "", "partition": p}
             for p, size in sizes.items()}
    files["train.ids"] = {"size": 10 * MIB, "sha256": ""}  # read by trainers, never loaded by servers
    return {"partitions": len(sizes), "files": files}


def test_each_server_needs_the_partitions_it_loads_plus_its_own_footprint() -> None:
    m = manifest({0: 100 * MIB, 1: 300 * MIB, 2: 50 * MIB, 3: 10 * MIB})
    assert sizing.server_bytes(m, 2) == [150 * MIB, 310 * MIB]  # ordinal 0: 0 and 2; ordinal 1: 1 and 3
    assert sizing.memory_mib(m, 2) == 160 + 2 * 310  # the larger server: overhead + 2x its partitions
    assert sizing.memory_mib(m, 4) == 160 + 2 * 300
    assert sizing.scratch_mib(m, 1) == 256 + 460
    assert not sizing.has_sizes({"partitions": 2})


def _measured_rss(tmp_path: Path, nodes: int, dim: int) -> tuple[int, dict[str, object]]:
    """RSS of a server holding a whole synthetic graph after touching every node's features and
    neighbours (so their pages are resident), and the graph's manifest."""
    from deepgnn.graph_engine.snark.client import DistributedGraph

    graph = synthetic(num_nodes=nodes, num_classes=4, feature_dim=dim, avg_degree=8.0)
    uri = convert(graph, str(tmp_path / f"g{nodes}"), 2)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "graph_engine.server", "--data-dir", uri, "--port",
                             str(port), "--ordinal", "0", "--replicas", "1", "--partitions", "2", "--host",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"127.0.0.1:{port}"
        health.wait_ready([endpoint], timeout=120)
        client = DistributedGraph([endpoint])
        try:
            ids = np.arange(nodes, dtype=np.int64)
            client.node_features(ids, np.array([[0, dim]]), np.float32)
            client.neighbors(ids, [0])
            client.weighted_sample_neighbors(ids, [0], 10)
        finally:
            client.reset()
        return psutil.Process(proc.pid).memory_info().rss, read_info(uri)
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_the_formula_is_calibrated_on_real_servers_rss(tmp_path: Path) -> None:
    (small_rss, small), (large_rss, large) = (_measured_rss(tmp_path, n, d)
                                              for n, d in ((500, 8), (60_000, 64)))
    small_bytes, large_bytes = sizing.server_bytes(small, 1)[0], sizing.server_bytes(large, 1)[0]
    # The fixed part covers a server holding next to nothing...
    assert small_rss <= sizing.SERVER_OVERHEAD, small_rss / MIB
    # ...and RSS grows by at most BYTES_FACTOR per byte of partition files loaded.
    slope = (large_rss - small_rss) / (large_bytes - small_bytes)
    assert 0.2 <= slope <= sizing.BYTES_FACTOR, slope
    for rss, manifest in ((small_rss, small), (large_rss, large)):
        assert rss <= sizing.memory_mib(manifest, 1) * MIB


@pytest.fixture(scope="module")
def sized_graph(tmp_path_factory: pytest.TempPathFactory) -> str:
    graph = synthetic(num_nodes=3_000, num_classes=4, feature_dim=64, avg_degree=8.0)
    return convert(graph, str(tmp_path_factory.mktemp("sized") / "g"), 4)


def test_the_connector_sizes_unset_memory_and_scratch_from_the_graph(sized_graph: str) -> None:
    from flyte_agent.settings import Settings
    from flyte_agent.task import DataServiceTask, static_custom
    from flyte_agent.task_request import resolve_spec

    custom = static_custom("graph", {"replicas": 2, "cpu": "2"})
    assert "memory" not in custom and "scratch_size" not in custom  # left to the connector
    spec = resolve_spec(custom, {"graph_uri": sized_graph}, Settings(), "p/d")
    manifest = read_info(sized_graph)
    assert spec.memory == f"{sizing.memory_mib(manifest, 2)}Mi"
    assert spec.scratch_size == f"{sizing.scratch_mib(manifest, 2)}Mi"
    # More servers, fewer partitions each: less memory each.
    four = resolve_spec(custom, {"graph_uri": sized_graph, "replicas": 4}, Settings(), "p/d")
    assert int(four.memory.removesuffix("Mi")) < int(spec.memory.removesuffix("Mi"))
    stated = resolve_spec(static_custom("graph", {"memory": "8Gi"}), {"graph_uri": sized_graph}, Settings(),
                          "p/d")
    assert stated.memory == "8Gi"
    # A task that states no memory leaves it out of its template, for the connector to size.
    task = DataServiceTask(name="g", config={"replicas": 2})
    assert "memory" not in task.task_config and "scratch_size" not in task.task_config


def test_a_stated_memory_below_the_need_is_refused_with_the_number(sized_graph: str) -> None:
    from flyte_agent.settings import Settings
    from flyte_agent.task import static_custom
    from flyte_agent.task_request import resolve_spec

    need = sizing.memory_mib(read_info(sized_graph), 1)
    with pytest.raises(ValueError) as err:
        resolve_spec(static_custom("graph", {"memory": "64Mi"}), {"graph_uri": sized_graph}, Settings(),
                     "p/d")
    assert str(err.value) == (f"memory: 64Mi per server is below the {need}Mi a server needs to hold its "
                              f"partitions of {sized_graph} with 1 replica(s); set memory to at least "
                              f"{need}Mi, add replicas, or leave memory unset to size it from the graph")
