"""The connector's Pulumi backend with the real engine: the CLI and pulumi-kubernetes from `make tools`
(tests/pulumi_engine.py) on a `file://` state backend, against the control-plane fixture (issue 17). The
recovery after a killed `up` runs on the fake CLI too (`either`), which must behave the same: pending
creates carried over, adopted by the recovering `up`, AlreadyExists without upsert, adopted by a destroy.

kwok runs the fleets' pods (Ready, no containers), so no graph server answers their endpoints: the
endpoint health check is off here (`check_endpoints=False`); it is exercised against real servers by
tests/test_connector_grpc.py. The executions are not watched (`watch_executions=False`): no propeller
made FlyteWorkflows here; that path runs on a real apiserver in tests/test_executions.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flyte_agent import fleet_program, stack_record
from flyte_agent.provisioner import Phase, Provision, Status
from flyte_agent.pulumi_cli import session_members
from flyte_agent.pulumi_provisioner import PulumiProvisioner
from flyte_agent.replicas import StateFiles, pid_alive
from flyte_agent.settings import Settings
from infra.spec import DataServiceSpec
from tests import fake_pulumi
from tests.control_plane import REPO, TOOLS_BIN, ControlPlane
from tests.pulumi_engine import engine_env, needs_engine

pytestmark = needs_engine()

WAIT_S = 240.0
# The label of the kwok node the fleets are placed on; a fleet placed elsewhere waits unschedulable.
POOL_LABEL = "graphfleet.test/pool"


@dataclass
class Engine:
    cp: ControlPlane | None  # None: the fake CLI, whose state backend keeps the cluster
    url: str
    namespace: str
    tmp: Path
    cli: Path = TOOLS_BIN / "pulumi"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            backend="pulumi", backend_url=self.url, pulumi_command=str(self.cli),
            kubeconfig=str(self.cp.kubeconfig) if self.cp else None, namespace=self.namespace,
            node_selector={POOL_LABEL: self.namespace}, gc_interval_seconds=0, check_endpoints=False,
            watch_executions=False, max_attempts=2, retry_backoff_seconds=0, operation_timeout_seconds=300,
            command_timeout_seconds=60, delete_wait_seconds=WAIT_S, state_dir=self.tmp / "state")
        values.update(overrides)
        return Settings(**values)

    def objects(self) -> list[str]:
        """The fleets' objects in the test's namespace, as Kind/name."""
        if self.cp is None:  # keys `type:namespace/name`
            keys = fake_pulumi.cluster(self.url)
            return sorted(f"{key.split(':')[2]}/{key.rsplit('/', 1)[1]}" for key in keys)
        found = []
        for api, plural, kind in (("apps/v1", "statefulsets", "StatefulSet"), ("v1", "services", "Service"),
                                  ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
                                  ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy")):
            base = "/api/v1" if api == "v1" else f"/apis/{api}"
            for item in self.cp.get(f"{base}/namespaces/{self.namespace}/{plural}")["items"]:
                found.append(f"{kind}/{item['metadata']['name']}")
        return sorted(found)


@pytest.fixture
def engine(control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           request: pytest.FixtureRequest) -> Iterator[Engine]:
    cp = control_plane
    namespace = f"fleets-{abs(hash(request.node.name)) % 10**6}"
    assert cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}).status_code \
        in (200, 201)
    env = engine_env(tmp_path / "pulumi-home", tmp_path / "backend", cp.kubeconfig)
    for key in ("PATH", "PULUMI_HOME", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_SKIP_UPDATE_CHECK",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"):
        monkeypatch.setenv(key, env[key])
    yield Engine(cp, f"file://{tmp_path / 'backend'}", namespace, tmp_path)
    cp.request("DELETE", f"/api/v1/namespaces/{namespace}")


@pytest.fixture(params=["fake", "real"])
def either(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The real engine, or the fake CLI (which needs no cluster), for a behaviour both must share."""
    if request.param == "real":
        return request.getfixturevalue("engine")  # type: ignore[no-any-return]
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test-only")
    return Engine(None, f"file://{tmp_path}/state", "fleets", tmp_path, fake_pulumi.install(tmp_path))


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., PulumiProvisioner]]:
    made: list[PulumiProvisioner] = []
    engine = request.getfixturevalue("either" if "either" in request.fixturenames else "engine")

    def build(**overrides: Any) -> PulumiProvisioner:
        made.append(PulumiProvisioner(engine.settings(**overrides)))
        return made[-1]

    yield build
    for provisioner in made:
        provisioner.close()


def provision(name: str, created_at: float | None = None) -> Provision:
    spec = DataServiceSpec(graph_uri="s3://graphs/cora", partitions=1, replicas=1)
    return Provision(name=name, spec=spec, owner="proj/dev", execution=f"proj/dev/{name}/n0",
                     created_at=time.time() if created_at is None else created_at)


def wait(provisioner: PulumiProvisioner, p: Provision, until: set[Phase], timeout: float = WAIT_S) -> Status:
    deadline = time.monotonic() + timeout
    while True:
        status = provisioner.status(p)
        if status.phase in until:
            return status
        assert time.monotonic() < deadline, f"still {status} after {timeout:.0f} s"
        time.sleep(1)


def place_fleets(engine: Engine) -> None:
    """The node the fleets' selector asks for: until it exists their pods stay Pending."""
    if engine.cp is not None:
        engine.cp.add_node(f"node-{engine.namespace}", {POOL_LABEL: engine.namespace})


def stack_pending_creates(engine: Engine, name: str) -> list[str]:
    import json

    if engine.cp is None:
        return [op["resource"]["urn"] for op in fake_pulumi.stacks(engine.url)[name]["pending"]]
    stacks = Path(engine.url.removeprefix("file://")) / ".pulumi" / "stacks"
    path = stacks / stack_record.PROJECT / f"{name}.json"
    deployment = json.loads(path.read_text()).get("checkpoint", {}).get("latest") or {}
    return [op["resource"]["urn"] for op in deployment.get("pending_operations") or []]


def test_a_fleet_is_created_read_and_destroyed_by_the_real_engine(engine: Engine, make) -> None:
    place_fleets(engine)
    provisioner = make()
    p = provision("real-a")
    provisioner.create(p)
    status = wait(provisioner, p, {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.READY, status.message
    assert len(status.endpoints) == 1 and f".{engine.namespace}." in status.endpoints[0], status.endpoints
    kinds = sorted(o.split("/")[0] for o in engine.objects())
    assert kinds == ["NetworkPolicy", "PodDisruptionBudget", "Service", "StatefulSet"], kinds
    provisioner.delete(p.name, p.owner)
    assert engine.objects() == []


def test_the_served_connector_over_grpc_with_the_real_engine(engine: Engine) -> None:
    """`pyflyte serve connector` as propeller calls it (CreateTask, GetTask to SUCCEEDED, DeleteTask) with
    the Pulumi backend, the real CLI and provider; the graph is a real store in moto's S3 server, read at
    CreateTask to size the fleet."""
    from graph_engine.convert import convert
    from tests.s3_server import moto_s3, s3_env
    from tests.test_graph_server import ring_graph

    place_fleets(engine)
    with moto_s3(buckets=["graphs"], set_env=True) as endpoint:
        graph = convert(ring_graph(), "s3://graphs/ring", partitions=2)
        _served_fleet_lifecycle(engine, graph, s3_env(endpoint))


def _served_fleet_lifecycle(engine: Engine, graph: str, env: dict[str, str]) -> None:
    import json

    from flyteidl.core import execution_pb2

    from flyte_agent import DataServiceTask
    from infra.contract import DATA_SERVICE_TASK_TYPE
    from tests.test_connector_grpc import Connector, literal_inputs, outputs_of, serialized

    s = engine.settings()
    connector = Connector(engine.tmp / "state", {**env,
        "GRAPHFLEET_BACKEND": "pulumi", "GRAPHFLEET_PULUMI_BACKEND_URL": s.backend_url,
        "GRAPHFLEET_PULUMI_COMMAND": s.pulumi_command, "GRAPHFLEET_KUBECONFIG": str(s.kubeconfig),
        "GRAPHFLEET_NAMESPACE": s.namespace, "GRAPHFLEET_NODE_SELECTOR": json.dumps(s.node_selector),
        "GRAPHFLEET_CHECK_ENDPOINTS": "false", "GRAPHFLEET_WATCH_EXECUTIONS": "false",
        "GRAPHFLEET_GC_INTERVAL_SECONDS": "0"})
    try:
        connector.wait_serving()
        task = DataServiceTask(name="graph", config={"replicas": 1})
        meta = connector.create(serialized(task), literal_inputs(task, graph_uri=graph, replicas=2))
        resource = connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta, timeout=WAIT_S)
        assert resource.phase == execution_pb2.TaskExecution.SUCCEEDED, resource.message
        assert len(outputs_of(resource)["endpoints"]) == 2
        assert "StatefulSet" in {o.split("/")[0] for o in engine.objects()}
        connector.delete(DATA_SERVICE_TASK_TYPE, meta)
        deadline = time.monotonic() + WAIT_S  # DeleteTask answers within propeller's deadline
        while engine.objects():
            assert time.monotonic() < deadline, engine.objects()
            time.sleep(1)
    finally:
        connector.stop()


def test_gc_destroys_an_expired_fleet_with_the_real_engine(engine: Engine, make) -> None:
    place_fleets(engine)
    provisioner = make()
    p = provision("real-gc")
    provisioner.create(p)
    assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    assert provisioner.gc(p.expires_at + 1) == [stack_record.stack_name(p.name)]
    assert engine.objects() == []


def test_two_replicas_share_one_state_backend(engine: Engine, make) -> None:
    """A fleet made through one replica is read and deleted through another (round-robin GetTasks)."""
    place_fleets(engine)
    a, b = make(), make()
    p = provision("real-two")
    a.create(p)
    assert wait(b, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    b.delete(p.name, p.owner)
    assert engine.objects() == []
    assert wait(a, p, {Phase.FAILED}).message.endswith("it is not brought back")


_CONNECTOR = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_pulumi_real import provision
    from flyte_agent.pulumi_provisioner import PulumiProvisioner
    from flyte_agent.settings import Settings
    PulumiProvisioner(Settings.model_validate_json({settings!r})).create(provision({name!r}))
    time.sleep(600)
""")


def kill_mid_create(engine: Engine, name: str) -> int:
    """A connector replica dies with its pod in the middle of `up` (its StatefulSet created, awaiting
    pods that cannot be scheduled yet; the fake's `up` hangs there): the replica, the CLI and the CLI's
    plugins. Returns the CLI's pid."""
    if engine.cp is None:
        fake_pulumi.script_faults(engine.url, stack_record.stack_name(name), up=["hang"])
    script = _CONNECTOR.format(root=str(REPO), settings=engine.settings().model_dump_json(), name=name)
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stack = stack_record.stack_name(name)
    state_files = StateFiles(engine.url)
    deadline = time.monotonic() + WAIT_S
    try:
        while True:
            locks = state_files.lock_files(stack_record.PROJECT, stack)
            made = any(o.startswith("StatefulSet/") for o in engine.objects())
            if locks and made:
                cli = locks[0].pid
                break
            why = child.stderr.read() if child.poll() is not None and child.stderr else ""
            assert child.poll() is None and time.monotonic() < deadline, \
                f"the replica never reached the middle of its up: {why}"
            time.sleep(0.5)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
    for pid in [cli, *session_members(cli)]:  # the pod's death takes every process of it
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert stack_pending_creates(engine, stack), "the killed up left no pending create: nothing to recover"
    return cli


def test_a_replica_killed_mid_create_is_recovered_by_another(either: Engine, make) -> None:
    """The trial's failure: the recovering `up` re-applies the StatefulSet under a field manager of its own
    and met a conflict on a defaulted atomic field; every attempt failed within seconds."""
    engine = either
    kill_mid_create(engine, "real-k")
    place_fleets(engine)
    fresh = make(max_attempts=1)
    p = provision("real-k")
    status = wait(fresh, p, {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.READY, status.message
    # The dead holder's lock went with the sidecar the CLI's fileblob wrote beside it (`<uuid>.json.attrs`).
    locks = Path(engine.url.removeprefix("file://")) / ".pulumi" / "locks" / "organization" / \
        stack_record.PROJECT / stack_record.stack_name(p.name)
    assert sorted(f.name for f in locks.iterdir()) == []
    fresh.delete(p.name, p.owner)
    assert engine.objects() == []


def test_without_upsert_the_recovering_up_fails_with_already_exists(either: Engine, make,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """pulumi-kubernetes >= 4.29 creates with a plain POST (PR 4278): an object left by a killed `up` fails
    the next create unless the provider upserts; the give-up destroy adopts the pending create (stack
    export/import) and deletes its object."""
    engine = either
    kill_mid_create(engine, "real-u")
    place_fleets(engine)
    monkeypatch.setattr(fleet_program, "FLEET_UPSERT_EXISTING_OBJECTS", False)
    fresh = make(max_attempts=1)
    p = provision("real-u")
    status = wait(fresh, p, {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.FAILED and "already exists" in status.message, status.message
    deadline = time.monotonic() + WAIT_S  # a fleet that gave up is destroyed: the adopted objects go too
    while engine.objects():
        assert time.monotonic() < deadline, engine.objects()
        time.sleep(1)


def test_a_cli_killed_from_outside_leaves_no_plugin_running(engine: Engine, make) -> None:
    """The CLI starts each plugin in a process group of its own, and only a live CLI stops them: a CLI
    killed from outside (the OOM killer) left its provider awaiting the fleet for up to ~15 minutes."""
    provisioner = make(max_attempts=2)
    p = provision("real-o")
    provisioner.create(p)  # placed on no node: its `up` waits for pods that cannot schedule
    stack = stack_record.stack_name(p.name)
    state_files = StateFiles(engine.url)
    deadline = time.monotonic() + WAIT_S
    while not (state_files.lock_files(stack_record.PROJECT, stack) and engine.objects()):
        assert time.monotonic() < deadline, "the up never started"
        time.sleep(0.5)
    cli = state_files.lock_files(stack_record.PROJECT, stack)[0].pid
    plugins = [pid for pid in session_members(cli) if pid != cli]
    assert plugins, "the CLI runs the provider in its session"
    os.kill(cli, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(pid_alive(pid) for pid in plugins):
        assert time.monotonic() < deadline, f"plugins outlived their CLI: {session_members(cli)}"
        time.sleep(0.2)
    provisioner.delete(p.name, p.owner, abort=True)


def test_failed_attempts_are_spaced_by_the_backoff(engine: Engine, make) -> None:
    """The trial's three attempts ran back to back in 4 s, so a short API outage spent them all: here a
    fleet whose namespace does not exist fails each `up` at once, and the second starts only after
    `retry_backoff_seconds`."""
    import json

    provisioner = make(namespace="no-such-namespace", max_attempts=2, retry_backoff_seconds=6)
    p = provision("real-b")
    provisioner.create(p)
    status = wait(provisioner, p, {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.FAILED and 'namespaces "no-such-namespace" not found' in status.message, \
        status.message
    stack = f"organization/{stack_record.PROJECT}/{stack_record.stack_name(p.name)}"
    history = json.loads(subprocess.run(
        [str(TOOLS_BIN / "pulumi"), "stack", "history", "--json", "--stack", stack],
        cwd=engine.tmp, env={**os.environ, "PULUMI_BACKEND_URL": engine.url}, capture_output=True, text=True,
        check=True).stdout)
    ups = sorted((h for h in history if h["kind"] == "update"), key=lambda h: h["startTime"])
    assert len(ups) == 2, ups
    gap = _epoch(ups[1]["startTime"]) - _epoch(ups[0]["endTime"])
    assert gap >= 5, f"the second attempt started {gap:.0f} s after the first failed"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
