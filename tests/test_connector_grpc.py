"""The connector as FlytePropeller drives it: `pyflyte serve connector` over real gRPC, local fleets.

CreateTask with a TaskTemplate that flytekit serialized from a DataServiceTask, GetTask until
SUCCEEDED, sample the graph through the returned endpoints, DeleteTask, and the servers are gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import execution_pb2, identifier_pb2
from flyteidl.service.agent_pb2_grpc import AsyncAgentServiceStub
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.models.literals import LiteralMap
from flytekit.tools.translator import get_serializable
from google.protobuf import json_format

from flyte_agent import DataServiceConfig, DataServiceReleaseAllTask, DataServiceTask, DataServiceTeardownTask
from graph_engine import health, sizing
from graph_engine.convert import convert
from graph_engine.store import read_info
from infra.contract import DATA_SERVICE_TASK_TYPE, TEARDOWN_TASK_TYPE
from infra.spec import DataServiceSpec
from tests.polling import poll_until
from tests.s3_server import moto_s3, s3_env
from tests.test_graph_server import NODES, free_port, port_is_free, ring_graph

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]  # where `python -m tests.loopback_connector` is found
SETTINGS = SerializationSettings(ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")


def serialized(task: Any) -> Any:
    return get_serializable(OrderedDict(), SETTINGS, task).template.to_flyte_idl()


def literal_inputs(task: Any, **values: Any) -> Any:
    ctx = FlyteContextManager.current_context()
    return TypeEngine.dict_to_literal_map(ctx, values, task.python_interface.inputs).to_flyte_idl()


def execution_metadata(name: str, node: str = "n0", retry: int = 0, project: str = "proj",
                       domain: str = "dev") -> agent_pb2.TaskExecutionMetadata:
    wf = identifier_pb2.WorkflowExecutionIdentifier(project=project, domain=domain, name=name)
    return agent_pb2.TaskExecutionMetadata(task_execution_id=identifier_pb2.TaskExecutionIdentifier(
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(node_id=node, execution_id=wf),
        retry_attempt=retry))


class Connector:
    """A `pyflyte serve connector` subprocess on loopback, and a client for it."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        port, self.metrics_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.loopback_connector", str(port), str(self.metrics_port)],
            env={**os.environ, "GRAPHFLEET_BACKEND": "local", "GRAPHFLEET_STATE_DIR": str(state_dir), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.endpoint = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.endpoint)
        self.stub = AsyncAgentServiceStub(self.channel)

    def wait_serving(self) -> None:
        try:
            health.wait_ready([self.endpoint], timeout=90)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(self.proc.communicate()[0]) from None

    def create(self, template: Any, inputs: Any = None, name: str = "run1", node: str = "n0",
               project: str = "proj", domain: str = "dev") -> bytes:
        metadata = execution_metadata(name, node, project=project, domain=domain)
        request = agent_pb2.CreateTaskRequest(template=template, inputs=inputs,
                                              output_prefix=self.output_prefix(name, node, project, domain),
                                              task_execution_metadata=metadata)
        # Propeller's deadline for CreateTask.
        return bytes(self.stub.CreateTask(request, timeout=10).resource_meta)

    def output_prefix(self, name: str = "run1", node: str = "n0", project: str = "proj",
                      domain: str = "dev") -> str:
        """The task's output prefix, as propeller passes it (here a folder beside the state dir)."""
        return str(self.state_dir.parent / "outputs" / project / domain / name / node)

    def get(self, task_type: str, meta: bytes) -> agent_pb2.Resource:
        category = agent_pb2.TaskCategory(name=task_type, version=0)
        return self.stub.GetTask(agent_pb2.GetTaskRequest(task_category=category, resource_meta=meta),
                                 timeout=10).resource

    def wait_terminal(self, task_type: str, meta: bytes, timeout: float = 120) -> agent_pb2.Resource:
        seen: list[agent_pb2.Resource] = []

        def terminal() -> agent_pb2.Resource | None:
            seen.append(self.get(task_type, meta))
            done = (execution_pb2.TaskExecution.SUCCEEDED, execution_pb2.TaskExecution.FAILED)
            return seen[-1] if seen[-1].phase in done else None

        return poll_until(terminal, lambda: f"still {seen[-1].phase}: {seen[-1].message}", timeout, 0.3)

    def delete(self, task_type: str, meta: bytes) -> None:
        category = agent_pb2.TaskCategory(name=task_type, version=0)
        request = agent_pb2.DeleteTaskRequest(task_category=category, resource_meta=meta)
        self.stub.DeleteTask(request, timeout=30)

    def stop(self) -> str:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # like Ctrl-C: the connector stops what it started
        try:
            return self.proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[0]


def outputs_of(resource: agent_pb2.Resource) -> dict[str, Any]:
    ctx = FlyteContextManager.current_context()
    literals = LiteralMap.from_flyte_idl(resource.outputs)
    return TypeEngine.literal_map_to_kwargs(ctx, literals, {"endpoints": list[str], "endpoints_env": str,
                                                            "service": str})


def recorded_pids(state_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in state_dir.glob("*/server-*.pid")]


def pid_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def connector_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Connector] = []

    def make(env: dict[str, str] | None = None) -> Connector:
        connector = Connector(tmp_path / "state", env or {})
        started.append(connector)
        connector.wait_serving()
        return connector

    yield make
    for connector in started:
        pids = recorded_pids(connector.state_dir) if connector.state_dir.exists() else []
        connector.stop()
        for pid in pids:  # never leave a server behind, even when the test failed
            if pid_running(pid):
                os.kill(pid, signal.SIGKILL)


def sample_all_nodes(endpoints: list[str]) -> np.ndarray:
    from deepgnn.graph_engine.snark.client import DistributedGraph

    client = DistributedGraph(endpoints)
    try:
        return client.node_features(np.arange(NODES), np.array([[0, 2]]), np.float32)
    finally:
        client.reset()


def run_fleet_lifecycle(connector: Connector, graph_uri: str, replicas: int) -> None:
    task = DataServiceTask(name="graph", config={"replicas": 1})
    meta = connector.create(serialized(task), literal_inputs(task, graph_uri=graph_uri, replicas=replicas))
    resource = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
    assert resource.phase == execution_pb2.TaskExecution.SUCCEEDED, resource.message
    out = outputs_of(resource)
    assert len(out["endpoints"]) == replicas
    # One log link per server, to its log file.
    assert [link.name for link in resource.log_links] == [f"server {i} ({e})" for i, e in
                                                          enumerate(out["endpoints"])]
    assert all(Path(link.uri.removeprefix("file://")).is_file() for link in resource.log_links)
    assert out["endpoints_env"] == ",".join(out["endpoints"])
    # The Deck, where propeller HEADs it for a succeeded task: every server, its partitions and phase.
    deck_html = (Path(connector.output_prefix()) / "deck.html").read_text()
    for ordinal, endpoint_ in enumerate(out["endpoints"]):
        partitions = ", ".join(str(p) for p in range(ordinal, 2, replicas))
        assert (f"<tr><td>{ordinal}</td><td>{endpoint_}</td><td>{partitions}</td><td>serving</td>"
                in deck_html), deck_html
    assert f": ready, {replicas} server(s), 2 partitions" in deck_html and "<h3>logs</h3>" in deck_html
    features = sample_all_nodes(out["endpoints"])
    assert features[:, 0].tolist() == [float(i) for i in range(NODES)]

    # A retried CreateTask of the same node execution adopts the fleet instead of starting another.
    again = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, connector.create(
        serialized(task), literal_inputs(task, graph_uri=graph_uri, replicas=replicas)))
    assert outputs_of(again)["endpoints"] == out["endpoints"]
    assert len(recorded_pids(connector.state_dir)) == replicas

    pids = recorded_pids(connector.state_dir)
    connector.delete(DATA_SERVICE_TASK_TYPE, meta)
    assert not any(pid_running(pid) for pid in pids)
    assert all(port_is_free(int(e.rsplit(":", 1)[1])) for e in out["endpoints"])
    # Level-triggered: after the delete nothing is recorded, and a second delete is fine.
    assert recorded_pids(connector.state_dir) == []
    connector.delete(DATA_SERVICE_TASK_TYPE, meta)


def test_fleet_on_local_disk_through_pyflyte_serve_connector(connector_factory, tmp_path: Path) -> None:
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    run_fleet_lifecycle(connector_factory(), uri, replicas=2)


def test_fleet_on_s3_through_pyflyte_serve_connector(connector_factory) -> None:
    with moto_s3(buckets=["graphs"], set_env=True) as endpoint:
        uri = convert(ring_graph(), "s3://graphs/ring", partitions=2)
        run_fleet_lifecycle(connector_factory(s3_env(endpoint)), uri, replicas=1)


def test_bad_input_fails_with_a_clear_message_and_creates_nothing(connector_factory, tmp_path: Path) -> None:
    connector = connector_factory()
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=str(tmp_path / "missing")))
    meta = connector.create(serialized(task))
    resource = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
    assert resource.phase == execution_pb2.TaskExecution.FAILED
    assert "graph_uri: cannot read the graph: no meta.json" in resource.message

    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    meta = connector.create(serialized(task), literal_inputs(task, graph_uri=uri, replicas=3), name="run2")
    resource = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
    assert resource.phase == execution_pb2.TaskExecution.FAILED
    assert "replicas (3) exceeds partitions (2)" in resource.message
    assert recorded_pids(connector.state_dir) == []


def test_a_crashing_server_fails_the_fleet_naming_it_with_its_log(connector_factory, tmp_path: Path) -> None:
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    (tmp_path / "ring" / "node_1_0.map").unlink()  # server 1 finds its partition file missing: it exits
    connector = connector_factory()
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=2))
    meta = connector.create(serialized(task))
    messages: list[str] = []

    def failed() -> agent_pb2.Resource | None:
        resource = connector.get(DATA_SERVICE_TASK_TYPE, meta)
        assert resource.phase != execution_pb2.TaskExecution.SUCCEEDED
        if resource.phase == execution_pb2.TaskExecution.FAILED:
            return resource
        messages.append(resource.message)
        return None

    resource = poll_until(failed, lambda: messages[-1] if messages else "no answer", 120, 0.3)
    # While it comes up, the message says what the servers are doing, crashes included.
    assert any(m.startswith("2/2 servers loading partitions") for m in messages), messages
    assert any("1 restarting: exit code 1" in m for m in messages), messages
    # The failure names the server and quotes its log; the links point at both servers' logs.
    assert "graph-engine server 1 of gf-" in resource.message
    assert "(last exit: exit code 1)" in resource.message
    assert "partition file node_1_0.map is missing" in resource.message
    # The servers table travels with the task execution (custom_info); the Deck file is written too.
    rows = json_format.MessageToDict(resource.custom_info)["servers"]
    # Server 0 never crashed: serving, or stopped with the fleet when the give-up came first (a reconcile
    # round before this read, or server 0 still loading on a loaded machine).
    assert rows[0]["ordinal"] == 0 and (rows[0]["phase"], rows[0]["last_exit"]) in (
        ("serving", ""), ("pending", "stopped: the fleet failed"))
    assert (rows[1]["ordinal"], rows[1]["phase"], rows[1]["last_exit"]) == (1, "failed", "exit code 1")
    assert rows[1]["restarts"] == 5 and rows[0]["partitions"] == [0]
    links = {link.name.split(" (")[0]: link.uri for link in resource.log_links}
    assert sorted(links) == ["server 0", "server 1"]
    assert links["server 1"] in resource.message
    assert "node_1_0.map" in Path(links["server 1"].removeprefix("file://")).read_text()


def scrape(port: int) -> dict[str, float]:
    """`graphfleet_*` samples on the connector's Prometheus port, by `name{labels}`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
            for family in text_string_to_metric_families(text) if family.name.startswith("graphfleet_")
            for s in family.samples}


def test_metrics_and_the_operator_listing_of_a_local_fleet(connector_factory, tmp_path: Path) -> None:
    connector = connector_factory()
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=2))
    meta = connector.create(serialized(task), name="run7")
    endpoints = outputs_of(connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta))["endpoints"]

    metrics = scrape(connector.metrics_port)
    assert metrics["graphfleet_fleets{backend=local,phase=ready}"] == 1
    assert metrics["graphfleet_fleets{backend=local,phase=failed}"] == 0
    assert metrics["graphfleet_provision_seconds_count{backend=local}"] == 1
    assert metrics["graphfleet_leases_held{backend=local}"] == 0

    # The operator's view, from another process reading the same state dir.
    env = {**os.environ, "GRAPHFLEET_BACKEND": "local", "GRAPHFLEET_STATE_DIR": str(connector.state_dir)}
    shown = subprocess.run([sys.executable, "-m", "flyte_agent.cli", "fleets", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    [fleet] = json.loads(shown.stdout)
    assert fleet["owner"] == "proj/dev" and fleet["execution"] == "proj/dev/run7/n0"
    assert fleet["phase"] == "ready" and fleet["endpoints"] == endpoints and fleet["replicas"] == 2
    assert [s["phase"] for s in fleet["servers"]] == ["serving", "serving"]
    assert fleet["expires_at"] == fleet["created_at"] + DataServiceSpec(reuse="x").ttl_seconds
    table = subprocess.run([sys.executable, "-m", "flyte_agent.cli", "fleets"], env=env, capture_output=True,
                           text=True, timeout=120).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "OWNER", "EXECUTION/LEASES"]
    assert f"{fleet['name']}  proj/dev  proj/dev/run7/n0  ready" in table and "2/2" in table

    # The operator releases it as a teardown task of its project/domain would.
    pids = recorded_pids(connector.state_dir)
    released = subprocess.run([sys.executable, "-m", "flyte_agent.cli", "fleets", "release", fleet["name"],
                               "--owner", "proj/dev"], env=env, capture_output=True, text=True, timeout=120)
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == f"{fleet['name']}: released"
    assert not any(pid_running(pid) for pid in pids)
    connector.delete(DATA_SERVICE_TASK_TYPE, meta)  # absent: still a success
    teardowns = scrape(connector.metrics_port)
    assert teardowns["graphfleet_teardown_seconds_count{backend=local,outcome=released}"] == 1


def test_executions_sharing_a_fleet_hold_leases_until_the_last_is_released(connector_factory,
                                                                            tmp_path: Path) -> None:
    connector = connector_factory()
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=2, share="sweep"))
    metas, outs = {}, {}
    for run in ("run-a", "run-b"):
        metas[run] = connector.create(serialized(task), name=run)
        done = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, metas[run])
        assert done.phase == execution_pb2.TaskExecution.SUCCEEDED, done.message
        outs[run] = outputs_of(done)
    # One fleet, named for the share within the project and domain.
    assert outs["run-a"] == outs["run-b"] and outs["run-a"]["service"].startswith("gf-share-sweep-")
    pids = recorded_pids(connector.state_dir)
    assert len(pids) == 2

    # Another spec under the same share is refused, naming what differs; nothing is started.
    other = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=1, share="sweep",
                                                                   memory="4Gi"))
    refused = connector.wait_terminal(DATA_SERVICE_TASK_TYPE,
                                      connector.create(serialized(other), name="run-c"))
    assert refused.phase == execution_pb2.TaskExecution.FAILED
    assert "share 'sweep' is in use with another spec" in refused.message
    # The running fleet's memory was sized from the graph (its config left memory unset).
    sized = f"{sizing.memory_mib(read_info(uri), 2)}Mi"
    assert f"memory: '{sized}' running vs '4Gi' asked" in refused.message
    assert "replicas: 2 running vs 1 asked" in refused.message

    env = {**os.environ, "GRAPHFLEET_BACKEND": "local", "GRAPHFLEET_STATE_DIR": str(connector.state_dir)}
    shown = subprocess.run([sys.executable, "-m", "flyte_agent.cli", "fleets", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    [fleet] = json.loads(shown.stdout)
    assert fleet["leases"] == ["proj/dev/run-a", "proj/dev/run-b"]
    assert scrape(connector.metrics_port)["graphfleet_leases_held{backend=local}"] == 2

    # run-a's DeleteTask drops its lease only; run-b's teardown task drops the last and stops the fleet.
    connector.delete(DATA_SERVICE_TASK_TYPE, metas["run-a"])
    assert all(pid_running(pid) for pid in pids)
    assert len(sample_all_nodes(outs["run-b"]["endpoints"])) == NODES
    teardown = DataServiceTeardownTask(name="release")
    meta = connector.create(serialized(teardown), literal_inputs(teardown, service=outs["run-b"]["service"]),
                            name="run-b", node="n9")
    done = connector.wait_terminal(TEARDOWN_TASK_TYPE, meta)
    assert done.phase == execution_pb2.TaskExecution.SUCCEEDED, done.message
    assert "no lease left, fleet stopped" in done.outputs.literals["outcome"].scalar.primitive.string_value
    assert not any(pid_running(pid) for pid in pids)


def test_teardown_task_releases_the_fleet_and_tolerates_absence(connector_factory, tmp_path: Path) -> None:
    connector = connector_factory()
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=2))
    resource = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, connector.create(serialized(task)))
    service = outputs_of(resource)["service"]
    pids = recorded_pids(connector.state_dir)

    teardown = DataServiceTeardownTask(name="release")
    for expected in ("released", "released"):  # the second finds nothing: still a success
        meta = connector.create(serialized(teardown), literal_inputs(teardown, service=service))
        done = connector.wait_terminal(TEARDOWN_TASK_TYPE, meta)
        assert done.phase == execution_pb2.TaskExecution.SUCCEEDED, done.message
        assert expected in done.outputs.literals["outcome"].scalar.primitive.string_value
    assert not any(pid_running(pid) for pid in pids)


def test_a_teardown_releases_only_a_fleet_of_its_own_project_and_domain_by_name(
        connector_factory, tmp_path: Path) -> None:
    connector = connector_factory()
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=1))
    service = outputs_of(connector.wait_terminal(DATA_SERVICE_TASK_TYPE, connector.create(serialized(task))))[
        "service"]
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")

    teardown = DataServiceTeardownTask(name="release")
    cases = [(f"/../../../..{victim}", "proj", "dev", "is not a data service name"),
             (f"../{victim.name}", "proj", "dev", "is not a data service name"),
             (service, "proj", "prod", "does not belong to proj/prod"),
             (service, "other", "dev", "does not belong to other/dev")]
    for value, project, domain, message in cases:
        meta = connector.create(serialized(teardown), literal_inputs(teardown, service=value),
                                project=project, domain=domain)
        done = connector.wait_terminal(TEARDOWN_TASK_TYPE, meta)
        assert done.phase == execution_pb2.TaskExecution.FAILED, value
        assert done.message.startswith("service: ") and message in done.message, done.message
        assert "nothing was" in done.message
    assert (victim / "keep.txt").read_text() == "precious"
    pids = recorded_pids(connector.state_dir)
    assert pids and all(pid_running(pid) for pid in pids)


def test_graph_access_is_refused_at_create_naming_the_rule_and_revealing_nothing(
        connector_factory, tmp_path: Path) -> None:
    allowed = tmp_path / "team-a"
    allowed.mkdir()
    uri = convert(ring_graph(), str(allowed / "ring"), partitions=2)
    other = convert(ring_graph(), str(tmp_path / "team-b-ring"), partitions=2)
    rules = f'{{"proj": ["{allowed}/"], "proj/prod": ["{tmp_path}/nothing/"]}}'
    connector = connector_factory({"GRAPHFLEET_GRAPH_ACCESS": rules})
    task = DataServiceTask(name="graph", config={"replicas": 1})  # the graph comes as the input
    messages = []
    for graph in (other, str(tmp_path / "team-b-missing"), f"{allowed}/../team-b-ring"):
        meta = connector.create(serialized(task), literal_inputs(task, graph_uri=graph), name="denied")
        done = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
        assert done.phase == execution_pb2.TaskExecution.FAILED
        messages.append(done.message.replace(graph, "GRAPH"))
    # An existing and a missing graph of another team read the same: nothing was looked at.
    assert messages[0] == messages[1], messages
    assert "GRAPHFLEET_GRAPH_ACCESS rule 'proj'" in messages[0] and "'..' segments" in messages[2]
    meta = connector.create(serialized(task), literal_inputs(task, graph_uri=uri), domain="prod")
    done = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
    assert done.phase == execution_pb2.TaskExecution.FAILED and "rule 'proj/prod'" in done.message
    meta = connector.create(serialized(task), literal_inputs(task, graph_uri=uri), project="other")
    done = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
    assert done.phase == execution_pb2.TaskExecution.FAILED and "has no rule for 'other/dev'" in done.message
    assert recorded_pids(connector.state_dir) == []
    done = connector.wait_terminal(DATA_SERVICE_TASK_TYPE,
                                   connector.create(serialized(task), literal_inputs(task, graph_uri=uri)))
    assert done.phase == execution_pb2.TaskExecution.SUCCEEDED, done.message


def test_release_all_frees_the_fleets_of_its_own_execution_only(connector_factory, tmp_path: Path) -> None:
    """What an on_failure handler does: it runs in the failed execution, with no `service` input."""
    connector = connector_factory()
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    task = DataServiceTask(name="graph", config=DataServiceConfig(graph_uri=uri, replicas=1))
    pids: dict[str, list[int]] = {}
    for run, node in (("run-a", "n0"), ("run-a", "n1"), ("run-b", "n0")):
        before = set(recorded_pids(connector.state_dir))
        done = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, connector.create(serialized(task), name=run,
                                                                                node=node))
        assert done.phase == execution_pb2.TaskExecution.SUCCEEDED, done.message
        pids.setdefault(run, []).extend(set(recorded_pids(connector.state_dir)) - before)

    release_all = DataServiceReleaseAllTask(name="release_all")
    for expected in ("released gf-run-a-n0-", "released nothing (none found)"):  # level-triggered
        meta = connector.create(serialized(release_all), name="run-a", node="fn0-n0")
        done = connector.wait_terminal(TEARDOWN_TASK_TYPE, meta)
        assert done.phase == execution_pb2.TaskExecution.SUCCEEDED, done.message
        outcome = done.outputs.literals["outcome"].scalar.primitive.string_value
        assert outcome.startswith("proj/dev/run-a: ") and expected in outcome, outcome
    assert len(pids["run-a"]) == 2 and not any(pid_running(pid) for pid in pids["run-a"])
    assert len(pids["run-b"]) == 1 and all(pid_running(pid) for pid in pids["run-b"])


def test_the_served_connector_builds_its_provisioner_before_the_first_call(connector_factory) -> None:
    connector = connector_factory()
    # The local provisioner makes its state dir when built; no call has been made.
    assert connector.state_dir.is_dir()


def test_a_bad_setting_stops_the_served_connector_at_start(tmp_path: Path) -> None:
    connector = Connector(tmp_path / "state", {"GRAPHFLEET_MAX_CONCURRENT_OPERATIONS": "0"})
    try:
        returncode = connector.proc.wait(timeout=90)  # hang guard: a connector that serves never exits
    finally:
        output = connector.stop()
    assert returncode != 0
    assert "SettingsError" in output and "GRAPHFLEET_MAX_CONCURRENT_OPERATIONS" in output


def test_importing_flytekit_leaves_the_connector_unbuilt() -> None:
    # What a training pod or `pyflyte run` does (the flytekit.plugins entry point loads the
    # connector module): no connector settings there, so nothing may be read or built.
    check = ("import flytekit\nfrom flyte_agent import connector\n"
             "assert connector.provisioning._made is None, 'connector provisioning built on import'")
    env = {**os.environ, "GRAPHFLEET_MAX_CONCURRENT_OPERATIONS": "0"}
    run = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
