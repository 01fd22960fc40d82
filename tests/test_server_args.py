"""The servers' command in the DSL: `DataServiceConfig(args=[...])` from an allow-list of DeepGNN server
options, refused at definition with the argument named, and passed to every server of the fleet."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from deepgnn.graph_engine.snark.client import MemoryGraph

from flyte_agent import DataServiceConfig, DataServiceTask
from flyte_agent.local_provisioner import LocalProvisioner
from flyte_agent.provisioner import Phase, Provision
from flyte_agent.settings import Settings
from graph_engine.convert import convert
from graph_engine.server import parse_args
from infra.graph_service import server_command
from tests.test_graph_server import ring_graph
from tests.test_local_provisioner import servers_on, wait_for
from workflows.graph_client import open_service


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/etc"], "'--data-dir' is not allowed; allowed: --storage, --skip-temporal"),
    (["--port=80"], "server argument '--port' is not allowed"),
    (["--storage", "ssd"], "--storage takes one of memory, disk, got 'ssd'"),
    (["--storage"], "--storage takes one of memory, disk, got None"),
    (["--skip-temporal", "--skip-temporal"], "'--skip-temporal' is given twice"),
    (["sh", "-c", "id"], "server argument 'sh' is not allowed"),
])
def test_args_outside_the_allow_list_are_refused_at_definition_naming_them(args: list[str],
                                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataServiceTask(name="graph", config={"args": args})


def test_allowed_args_reach_the_pod_command_and_the_server_parser() -> None:
    spec = DataServiceConfig(graph_uri="s3://graphs/cora", partitions=2,
                             args=["--storage=disk", "--skip-temporal"])
    assert spec.args == ["--storage", "disk", "--skip-temporal"]
    command = server_command(spec)
    assert command[-3:] == ["--storage", "disk", "--skip-temporal"]
    parsed = parse_args([c.replace("$(GRAPHFLEET_ORDINAL)", "0") for c in command[3:]])
    assert parsed.storage == "disk" and parsed.skip_temporal
    assert parse_args(["--data-dir", "/g", "--port", "5000", "--ordinal", "0", "--replicas", "1",
                       "--partitions", "1"]).storage == "memory"


def test_a_local_fleet_serves_the_same_graph_from_disk_storage(tmp_path: Path) -> None:
    """The local provisioner starts every server with the args; DeepGNN's disk storage serves the
    same features and neighbours as the in-process graph."""
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    provisioner = LocalProvisioner(Settings(state_dir=tmp_path / "state"))
    fleet = Provision(name="gf-args", spec=DataServiceConfig(graph_uri=uri, partitions=2, replicas=2,
                                                             args=["--storage", "disk"]),
                      owner="p/d", execution="p/d/e/n0", created_at=time.time())
    try:
        provisioner.create(fleet)
        ready = wait_for(lambda: provisioner.status(fleet), Phase.READY)
        ports = [int(e.rsplit(":", 1)[1]) for e in ready.endpoints]
        running = servers_on(ports)
        assert len(running) == 2 and all("--storage disk" in line for line in running), running
        served, local = open_service(ready.endpoints), MemoryGraph(uri, [0, 1])
        nodes = np.arange(ring_graph().num_nodes, dtype=np.int64)
        spec = np.array([[0, ring_graph().features.shape[1]]])
        assert np.array_equal(served.node_features(nodes, spec, np.float32),
                              local.node_features(nodes, spec, np.float32))
    finally:
        provisioner.delete(fleet.name, fleet.owner)
        provisioner.close()
