"""Shared fleets by lease: the plain rules, and leases kept in the fleet's own record on both backends
(local: fleet.json; Pulumi: the stack's tags, through the CLI seam tests/fake_pulumi.py), with one
expiry that the one gc honours, renewed while a holder's execution runs and dropped once it has ended."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flyte_agent import connector, leases, stack_record, task_request
from flyte_agent.executions import Execution, LocalExecutions, local_run
from flyte_agent.local_provisioner import LocalProvisioner
from flyte_agent.provisioner import NotOwner, Phase, Provision
from flyte_agent.pulumi_provisioner import PulumiProvisioner
from flyte_agent.settings import Settings
from graph_engine import health
from graph_engine.convert import convert
from infra.spec import DataServiceSpec
from tests import fake_pulumi
from tests.test_graph_server import ring_graph
from tests.test_pulumi_provisioner import backend, settings, wait  # noqa: F401


class Executions:
    """An execution probe whose answers a test sets (UNKNOWN for any other execution)."""

    def __init__(self) -> None:
        self.states: dict[str, Execution] = {}
        self.asked: set[str] = set()

    def state(self, workflow_execution: str) -> Execution:
        self.asked.add(workflow_execution)
        return self.states.get(workflow_execution, Execution.UNKNOWN)


def test_a_share_is_named_for_its_project_and_domain_only() -> None:
    assert leases.fleet_name("p", "dev", "sweep") == leases.fleet_name("p", "dev", "sweep")  # deterministic
    assert leases.fleet_name("p", "dev", "sweep") != leases.fleet_name("q", "dev", "sweep")
    assert leases.fleet_name("p", "dev", "sweep") != leases.fleet_name("p", "prod", "sweep")
    assert leases.fleet_name("p", "dev", "sweep").startswith("gf-share-sweep-")


def test_differences_name_the_fields_and_ignore_the_lease_duration() -> None:
    running = {"graph_uri": "s3://g/a", "replicas": 2, "ttl_seconds": 3600, "share": "s"}
    assert leases.differences(running, {**running, "ttl_seconds": 600}) == []
    assert leases.differences(running, {**running, "replicas": 4, "cpu": "2"}) == [
        "cpu: None running vs '2' asked", "replicas: 2 running vs 4 asked"]
    with pytest.raises(leases.ShareConflict, match="share 's' is in use with another spec .replicas"):
        leases.check_same_spec("s", running, {**running, "replicas": 4})


def test_take_never_shortens_and_drops_lapsed_leases() -> None:
    held = leases.take({"p/d/old": 5.0}, "p/d/a", 110.0, now=10.0)
    assert held == {"p/d/a": 110.0}
    assert leases.take(held, "p/d/a", 50.0, now=20.0) == {"p/d/a": 110.0}
    assert leases.expiry(leases.take(held, "p/d/b", 200.0, now=20.0)) == 200.0
    assert leases.drop(held, "p/d/a") == {} and leases.expiry({}) == 0.0


def test_the_stack_record_keeps_spec_and_leases_within_pulumi_tag_rules() -> None:
    shape = {"graph_uri": "s3://graphs/" + "g" * 300, "replicas": 2, "args": ["--x"] * 20}
    tags = stack_record.shared_tags("sweep", shape, "proj/dev/run-a", 1_900_000_000.5)
    stack_record.check_tags(tags)  # what `stack tag set` would refuse
    assert len([k for k in tags if k.startswith(stack_record.SPEC_PREFIX)]) > 1  # chunked
    assert stack_record.spec_of(tags) == shape
    assert stack_record.leases_of(tags) == {"proj/dev/run-a": 1_900_000_000.0}
    del tags[f"{stack_record.SPEC_PREFIX}1"]
    assert stack_record.spec_of(tags) is None  # a partial spec is no spec
    with pytest.raises(ValueError, match="tag rules"):
        stack_record.check_tags({"graphfleet:lease." + "x" * 30: "1"})


def lease_spec(uri: str, **fields: object) -> DataServiceSpec:
    return DataServiceSpec.model_validate({"graph_uri": uri, "partitions": 2, "replicas": 2, "share": "sweep",
                                           "ttl_seconds": 300, **fields})


@pytest.mark.slow
def test_local_leases_live_in_the_fleet_record_under_one_expiry(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    executions = Executions()
    provisioner = LocalProvisioner(Settings(state_dir=tmp_path / "state", renew_seconds=600),
                                   executions=executions)
    try:
        now = time.time()
        a = leases.shared_provision("p/d", "sweep", lease_spec(uri), "p/d/run-a", now)
        b = leases.shared_provision("p/d", "sweep", lease_spec(uri), "p/d/run-b", now + 100)
        provisioner.create(a)
        provisioner.create(b)  # adopts a's fleet: one fleet, two leases
        assert a.name == b.name and len(provisioner.pids(a.name)) == 2
        record = tmp_path / "state" / a.name / "fleet.json"
        assert json.loads(record.read_text())["leases"] == {"p/d/run-a": now + 300, "p/d/run-b": now + 400}
        assert json.loads(record.read_text())["expires_at"] == now + 400
        # A retried create of a holder whose lease runs long enough writes nothing (CreateTask retries).
        written = record.stat().st_mtime_ns
        provisioner.create(a)
        assert record.stat().st_mtime_ns == written

        # Another spec under the share is refused, naming the field; another project cannot release.
        with pytest.raises(leases.ShareConflict, match="replicas: 2 running vs 1 asked"):
            provisioner.create(leases.shared_provision("p/d", "sweep", lease_spec(uri, replicas=1), "p/d/c",
                                                       now))
        with pytest.raises(NotOwner):
            provisioner.release(a.name, "q/d", "p/d/run-a")

        # The listing is read only: no health probe (the metrics collector calls it every 15 s).
        assert provisioner.status(a).phase is not Phase.ABSENT
        monkeypatch.setattr(health, "not_ready", lambda *a, **k: pytest.fail("fleets() probed health"))
        [listed] = provisioner.fleets()
        assert listed.leases == ["p/d/run-a", "p/d/run-b"] and listed.expires_at == now + 400
        monkeypatch.undo()

        # run-a releases; run-b's lease lapses at now+400, but its holder still runs: gc renews it.
        assert provisioner.release(a.name, "p/d", "p/d/run-a") == 1
        executions.states["p/d/run-b"] = Execution.RUNNING
        assert provisioner.gc(now + 401) == [] and executions.asked == {"p/d/run-b"}  # not run-a: released
        renewed = json.loads(record.read_text())
        assert renewed["leases"]["p/d/run-b"] >= now + 400 and renewed["expires_at"] > time.time() + 500
        # Once it stops, the lease lapses at the renewed expiry and the same gc stops the fleet.
        executions.states.clear()
        pids = provisioner.pids(a.name)
        assert provisioner.gc(renewed["expires_at"] + 1) == [a.name]
        assert provisioner.status(a).phase is Phase.ABSENT and all(pid > 0 for pid in pids)

        # Releasing the last holder's execution stops the fleet at once.
        c = leases.shared_provision("p/d", "sweep", lease_spec(uri), "p/d/run-c", time.time())
        provisioner.create(c)
        assert provisioner.release_execution("p/d/run-c") == [c.name]
        assert provisioner.status(c).phase is Phase.ABSENT and provisioner.release(c.name, "p/d", "x") is None
    finally:
        provisioner.close()


def test_a_fleet_of_its_own_is_renewed_while_its_execution_runs(tmp_path: Path) -> None:
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=1)
    executions = Executions()
    provisioner = LocalProvisioner(Settings(state_dir=tmp_path / "state", renew_seconds=600),
                                   executions=executions)
    try:
        spec = DataServiceSpec(graph_uri=uri, partitions=1, ttl_seconds=300)
        fleet = Provision(name="gf-own-1", spec=spec, owner="p/d", execution="p/d/run-x/n0",
                          created_at=time.time())
        provisioner.create(fleet)
        executions.states["p/d/run-x"] = Execution.RUNNING  # e.g. its training still runs
        assert provisioner.gc(fleet.expires_at + 1) == []
        assert executions.asked == {"p/d/run-x"}
        [listed] = provisioner.fleets()
        assert listed.expires_at > time.time() + 500 and listed.leases == []
        executions.states.clear()
        assert provisioner.gc(listed.expires_at + 1) == ["gf-own-1"]
    finally:
        provisioner.close()


@pytest.mark.slow
def test_an_aborted_local_run_frees_its_fleets_at_the_next_gc(tmp_path: Path) -> None:
    """A local run is its process: killed (what an abort of `pyflyte run` is), it runs no teardown,
    and the next gc stops its own fleet and drops its lease on a shared one, before any expiry."""
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=1)
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    holder = f"local/local/{local_run(run.pid)}"
    me = f"local/local/{task_request.local_run()}"
    provisioner = LocalProvisioner(Settings(state_dir=tmp_path / "state"), executions=LocalExecutions())
    try:
        spec = DataServiceSpec(graph_uri=uri, partitions=1, ttl_seconds=3600)
        own = Provision(name="gf-abort-own", spec=spec, owner="local/local", execution=f"{holder}/n0",
                        created_at=time.time())
        provisioner.create(own)
        shared = lease_spec(uri, partitions=1, replicas=1, ttl_seconds=3600)
        for h in (holder, me):
            provisioner.create(leases.shared_provision("local/local", "sweep", shared, h, time.time()))
        name = leases.fleet_name("local", "local", "sweep")
        assert provisioner.gc(time.time()) == []  # both runs alive, nothing lapsed
        run.kill()
        run.wait(timeout=60)
        assert provisioner.gc(time.time()) == ["gf-abort-own"]
        assert provisioner.status(own).phase is Phase.ABSENT
        [left] = provisioner.fleets()
        assert left.name == name and left.leases == [me]  # still served for this run
        assert provisioner.gc(time.time()) == []
    finally:
        run.kill()
        provisioner.close()


def test_pulumi_gc_releases_the_holders_whose_execution_ended_and_nothing_else(
        backend: tuple[str, Path], pulumi: Callable[..., PulumiProvisioner]) -> None:  # noqa: F811
    url, _ = backend
    executions = Executions()
    provisioner = pulumi(executions)
    now = time.time()
    spec = lease_spec("s3://graphs/cora", replicas=1)
    a = leases.shared_provision("proj/dev", "sweep", spec, "proj/dev/run-a", now)
    b = leases.shared_provision("proj/dev", "sweep", spec, "proj/dev/run-b", now)
    own = Provision(name="gf-own-c", spec=spec.model_copy(update={"share": None}), owner="proj/dev",
                    execution="proj/dev/run-c/n0", created_at=now)
    for p in (a, b, own):
        provisioner.create(p)
        assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    shared = stack_record.stack_name(a.name)
    executions.states.update({"proj/dev/run-a": Execution.RUNNING, "proj/dev/run-b": Execution.RUNNING,
                             "proj/dev/run-c": Execution.RUNNING})
    start = len(fake_pulumi.calls(url))
    assert provisioner.gc(now) == [] and tag_writes(url, shared, start) == []

    # run-a aborted: its lease goes now, hours before it lapses; run-b keeps the fleet.
    executions.states["proj/dev/run-a"] = Execution.ENDED
    assert provisioner.gc(now) == []
    assert list(stack_record.leases_of(fake_pulumi.stacks(url)[shared]["tags"])) == ["proj/dev/run-b"]
    # run-c succeeded without a release: nothing now (a child launch plan may have handed it on);
    # unknown changes nothing either.
    executions.states["proj/dev/run-c"] = Execution.SUCCEEDED
    executions.states["proj/dev/run-b"] = Execution.UNKNOWN
    assert provisioner.gc(now) == [] and provisioner.status(own).phase is Phase.READY
    # run-c failed (or was aborted) after all, and run-b ended: both fleets go at this gc.
    executions.states["proj/dev/run-c"] = Execution.ENDED
    executions.states["proj/dev/run-b"] = Execution.ENDED
    assert sorted(provisioner.gc(now)) == sorted([shared, "gf-own-c"])
    assert fake_pulumi.stacks(url) == {}  # destroyed and removed, as at an expiry


@pytest.fixture
def pulumi(backend: tuple[str, Path]) -> Iterator[Callable[..., PulumiProvisioner]]:  # noqa: F811
    made: list[PulumiProvisioner] = []

    def build(executions: Executions | None = None) -> PulumiProvisioner:
        made.append(PulumiProvisioner(settings(backend, renew_seconds=600), executions=executions))
        return made[-1]

    yield build
    for provisioner in made:
        provisioner.close()


def tag_writes(url: str, stack: str, start: int) -> list[list[str]]:
    return [c for c in fake_pulumi.calls(url)[start:] if stack in c and c[:3] in (["stack", "tag", "set"],
                                                                                  ["stack", "tag", "rm"])]


def test_pulumi_leases_live_in_the_stack_and_the_last_release_removes_it(
        backend: tuple[str, Path], pulumi: Callable[..., PulumiProvisioner]) -> None:  # noqa: F811
    url, _ = backend
    executions = Executions()
    provisioner = pulumi(executions)
    now = time.time()
    spec = lease_spec("s3://graphs/cora")
    a = leases.shared_provision("proj/dev", "sweep", spec, "proj/dev/run-a", now)
    b = leases.shared_provision("proj/dev", "sweep", spec, "proj/dev/run-b", now + 100)
    provisioner.create(a)
    assert wait(provisioner, a, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    provisioner.create(b)
    name = stack_record.stack_name(a.name)
    tags = fake_pulumi.stacks(url)[name]["tags"]
    assert stack_record.leases_of(tags) == {"proj/dev/run-a": int(now + 300),
                                            "proj/dev/run-b": int(now + 400)}
    assert stack_record.expires_at(tags) == int(now + 400) and tags[stack_record.TAG_SHARE] == "sweep"
    assert stack_record.spec_of(tags) == leases.fleet_shape(spec.to_custom())

    # A second connector process (another replica, after a restart) sees the same leases.
    other = pulumi()
    [listed] = other.fleets()
    assert listed.leases == ["proj/dev/run-a", "proj/dev/run-b"]
    # Read only when nothing changes: a retried create and a status read write no tag.
    start = len(fake_pulumi.calls(url))
    other.create(b)
    assert wait(other, b, {Phase.READY}).phase is Phase.READY
    assert tag_writes(url, name, start) == []

    with pytest.raises(leases.ShareConflict, match="memory: '2Gi' running vs '4Gi' asked"):
        other.create(leases.shared_provision(
            "proj/dev", "sweep", lease_spec("s3://graphs/cora", memory="4Gi"), "proj/dev/run-c", now))
    with pytest.raises(NotOwner):
        other.release(a.name, "other/dev", "proj/dev/run-a")

    # run-a's release drops its tag only; run-b's lapsed lease is renewed by gc while it runs.
    assert other.release(a.name, "proj/dev", "proj/dev/run-a") == 1
    assert stack_record.leases_of(fake_pulumi.stacks(url)[name]["tags"]) == {"proj/dev/run-b": int(now + 400)}
    executions.states["proj/dev/run-b"] = Execution.RUNNING
    assert provisioner.gc(now + 401) == [] and executions.asked == {"proj/dev/run-b"}
    renewed = stack_record.expires_at(fake_pulumi.stacks(url)[name]["tags"])
    assert renewed is not None and renewed > time.time() + 500
    executions.states.clear()
    assert provisioner.gc(now + 401) == []  # not lapsed any more
    assert provisioner.gc(renewed + 1) == [name] and name not in fake_pulumi.stacks(url)

    # A later holder makes it again (no tombstone), and the last release removes the stack.
    c = leases.shared_provision("proj/dev", "sweep", spec, "proj/dev/run-c", time.time())
    other.create(c)
    assert wait(other, c, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    assert other.release_execution("proj/dev/run-c") == [name]
    assert name not in fake_pulumi.stacks(url)
    assert other.release(c.name, "proj/dev", "proj/dev/run-c") is None  # absent: nothing to release


def test_pulumi_renews_a_fleet_of_its_own_while_its_execution_runs(
        backend: tuple[str, Path], pulumi: Callable[..., PulumiProvisioner]) -> None:  # noqa: F811
    from tests.test_pulumi_provisioner import ready_fleet

    url, _ = backend
    executions = Executions()
    provisioner = pulumi(executions)
    fleet = ready_fleet(provisioner, "gf-own-2")  # execution exec-gf-own-2: not a workflow execution
    own = Provision(name="gf-own-3", spec=fleet.spec, owner="proj/dev", execution="proj/dev/run-y/n1",
                    created_at=time.time())
    provisioner.create(own)
    assert wait(provisioner, own, {Phase.READY}).phase is Phase.READY
    executions.states["proj/dev/run-y"] = Execution.RUNNING
    assert provisioner.gc(own.expires_at + 1) == ["gf-own-2"]  # its execution is no running one
    assert "gf-own-3" in fake_pulumi.stacks(url)
    expiry = stack_record.expires_at(fake_pulumi.stacks(url)["gf-own-3"]["tags"])
    assert expiry is not None and expiry > time.time() + 500


def test_a_lease_tag_lost_or_brought_back_by_a_concurrent_tag_write_changes_no_lease(
        backend: tuple[str, Path], pulumi: Callable[..., PulumiProvisioner]) -> None:  # noqa: F811
    """The DIY state backend's `stack tag set` rewrites the whole tags file (test_pulumi_provisioner's
    tags-file test): a writer that read before run-b took its lease drops run-b's tag, and one that read
    before run-a's release brings run-a's back. Leases are one object per holder beside the tags."""
    url, _ = backend
    provisioner = pulumi()
    now = time.time()
    spec = lease_spec("s3://graphs/cora", replicas=1)
    holders = {run: leases.shared_provision("proj/dev", "sweep", spec, f"proj/dev/{run}", now)
               for run in ("run-a", "run-b", "run-c")}
    for p in holders.values():
        provisioner.create(p)
        assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY  # its last GetTask
    name = stack_record.stack_name(holders["run-a"].name)
    stale = dict(fake_pulumi.stacks(url)[name]["tags"])  # what a concurrent writer read
    with fake_pulumi.StateBackend(fake_pulumi.state_dir(url)).state() as data:
        del data["stacks"][name]["tags"][stack_record.lease_key("proj/dev/run-b")]  # lost
    # run-a and run-c end: run-b still trains on the fleet, whatever its tag says.
    assert provisioner.release(name, "proj/dev", "proj/dev/run-a") == 2
    assert provisioner.release(name, "proj/dev", "proj/dev/run-c") == 1
    assert name in fake_pulumi.stacks(url) and provisioner.fleets()[0].leases == ["proj/dev/run-b"]
    # A stale writer brings run-a's and run-c's tags back: run-b's release still stops the fleet.
    with fake_pulumi.StateBackend(fake_pulumi.state_dir(url)).state() as data:
        data["stacks"][name]["tags"] = stale
    assert provisioner.release(name, "proj/dev", "proj/dev/run-b") == 0
    assert name not in fake_pulumi.stacks(url)


def test_the_connector_shares_a_pulumi_fleet_and_each_execution_releases_its_lease(
        backend: tuple[str, Path], pulumi: Callable[..., PulumiProvisioner],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from flyteidl.core.execution_pb2 import TaskExecution

    from flyte_agent import DataServiceConfig, DataServiceTask
    from tests.test_task_dsl import execution_metadata, template_of

    url, _ = backend
    provisioner = pulumi()
    monkeypatch.setattr(connector.provisioning, "_made", (settings(backend), provisioner))
    def resolve(custom: dict[str, object], *_: object) -> DataServiceSpec:  # partitions, without reading S3
        return DataServiceSpec.from_custom({**custom, "partitions": 2})

    monkeypatch.setattr(connector, "resolve_spec", resolve)
    served, teardown = connector.DataServiceConnector(), connector.DataServiceTeardownConnector()
    config = {"graph_uri": "s3://graphs/cora", "replicas": 2, "share": "sweep"}
    template = template_of(DataServiceTask(name="graph", config=DataServiceConfig(**config)))
    metas = {run: served._create(template, None, execution_metadata(run, "n0")) for run in ("run-a", "run-b")}
    assert not metas["run-a"].error and metas["run-a"].name == metas["run-b"].name
    name = metas["run-a"].name
    metas["run-b"].output_prefix = str(tmp_path / "outputs" / "run-b")  # as the async create records it
    deadline = time.monotonic() + 90
    while (done := served._get(metas["run-b"])).phase != TaskExecution.SUCCEEDED:
        assert done.phase != TaskExecution.FAILED and time.monotonic() < deadline, done.message
        time.sleep(0.2)
    assert sorted(stack_record.leases_of(fake_pulumi.stacks(url)[name]["tags"])) == ["proj/dev/run-a",
                                                                                    "proj/dev/run-b"]
    # The Deck of a Pulumi fleet: its servers as pods (phase unknown without a cluster to read).
    deck_html = (tmp_path / "outputs" / "run-b" / "deck.html").read_text()
    assert f"data service {name}: ready, 2 server(s), 2 partitions" in deck_html
    endpoint = f"{name}-0.{name}.graphfleet.svc.cluster.local:50051"
    assert f"<tr><td>0</td><td>{endpoint}</td><td>0</td><td>unknown</td>" in deck_html
    other = template_of(DataServiceTask(name="graph", config=DataServiceConfig(**config, memory="4Gi")))
    refused = served._create(other, None, execution_metadata("run-c", "n0"))
    assert "share 'sweep' is in use with another spec (memory: '2Gi' running vs '4Gi' asked)" in refused.error

    # Another project's teardown is refused with a clear message; run-a's abort drops its lease only.
    foreign = teardown._get(connector.TeardownMeta(service=name, caller="q/dev/run-q", owner="q/dev"))
    assert foreign.phase == TaskExecution.FAILED and "does not belong to q/dev" in foreign.message
    served._delete(metas["run-a"])
    assert sorted(stack_record.leases_of(fake_pulumi.stacks(url)[name]["tags"])) == ["proj/dev/run-b"]
    released = teardown._get(connector.TeardownMeta(service=name, caller="proj/dev/run-b", owner="proj/dev"))
    assert released.phase == TaskExecution.SUCCEEDED, released.message
    assert "no lease left, fleet stopped" in released.outputs["outcome"]
    assert name not in fake_pulumi.stacks(url)
