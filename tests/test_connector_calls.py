"""How the connector serves calls: the threads its calls run on, and create()'s read of the graph
(`graph_engine.store`, through one reused S3 client)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.extend.backend.base_connector import Resource
from flytekit.extend.backend.utils import mirror_async_methods

from flyte_agent import DataServiceConfig, DataServiceTask, connector
from flyte_agent.connector import DataServiceConnector, FleetMeta
from flyte_agent.provisioner import Phase, Provision, Status
from flyte_agent.settings import Settings
from graph_engine import store
from infra.spec import DataServiceSpec
from tests.s3_server import moto_s3
from tests.test_task_dsl import template_of

HANG_GUARD = 60  # seconds before a call that never gets a thread fails the test instead of hanging it


class BlockingDeletes:
    """A provisioner whose deletes wait (like a running destroy) until the test releases them."""

    executions = None  # executions are not followed

    def __init__(self) -> None:
        self.unblock = threading.Event()

    def release(self, name: str, owner: str, holder: str) -> int | None:
        return None  # no shared fleet: a teardown deletes

    def delete(self, name: str, owner: str, abort: bool = False) -> None:
        self.unblock.wait()

    def status(self, provision: Provision) -> Status:
        return Status(Phase.READY, ["fleet-0:50051"], message="up")


def test_waiting_deletes_do_not_hold_the_threads_gets_need(monkeypatch: pytest.MonkeyPatch) -> None:
    provisioner = BlockingDeletes()
    monkeypatch.setattr(connector.provisioning, "_made", (Settings(), provisioner))
    meta = FleetMeta(name="gf-x", spec=DataServiceSpec(graph_uri="s3://graphs/g", partitions=1).to_custom(),
                     owner="p/d", execution="p/d/x/n0", created_at=0.0)
    served = DataServiceConnector()

    async def aborts_then_a_poll() -> TaskExecution.Phase:
        # As flytekit's service calls them; more deletes than asyncio's default executor has threads.
        deletes = [asyncio.ensure_future(mirror_async_methods(served.delete, resource_meta=meta))
                   for _ in range(40)]
        try:
            poll = mirror_async_methods(served.get, resource_meta=meta)
            resource = await asyncio.wait_for(poll, HANG_GUARD)
        finally:
            provisioner.unblock.set()
        await asyncio.gather(*deletes)
        return resource.phase

    assert asyncio.run(aborts_then_a_poll()) == TaskExecution.SUCCEEDED


def write_meta(uri: str, meta: dict[str, object]) -> None:
    with fsspec.open(f"{uri}/meta.json", "w", endpoint_url=store.s3_endpoint()) as out:
        json.dump(meta, out)


def partitions(count: int) -> dict[str, object]:
    return {"partitions": {str(i): {} for i in range(count)}}


def test_the_reused_s3_client_sees_a_rewritten_graph_and_reports_a_missing_one() -> None:
    with moto_s3(buckets=["graphs"], set_env=True):
        write_meta("s3://graphs/g", partitions(4))
        assert store.partition_count("s3://graphs/g/") == 4
        write_meta("s3://graphs/g", partitions(2))  # reconverted in place: the next create must see it
        assert store.partition_count("s3://graphs/g") == 2
        with pytest.raises(FileNotFoundError, match="no meta.json at s3://graphs/nothing"):
            store.partition_count("s3://graphs/nothing")
        write_meta("s3://graphs/broken", {})
        with pytest.raises(ValueError, match="has no 'partitions' table"):
            store.partition_count("s3://graphs/broken")


def test_one_s3_client_serves_every_thread_until_the_endpoint_or_credentials_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:9001")
    first, _ = store.filesystem("s3://graphs/g")
    with ThreadPoolExecutor(1) as other_thread:
        assert other_thread.submit(store.filesystem, "s3://other/h").result()[0] is first
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:9002")
    moved, _ = store.filesystem("s3://graphs/g")
    assert moved is not first
    assert moved.endpoint_url == "http://127.0.0.1:9002"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
    assert store.filesystem("s3://graphs/g")[0] is not moved


class SlowProvisioner(BlockingDeletes):
    """Status reads and deletes that wait (a slow CLI, a long destroy); a create that fails once."""

    def __init__(self) -> None:
        super().__init__()
        self.creates = 0

    def status(self, provision: Provision) -> Status:
        if self.creates < 2:
            return Status(Phase.ABSENT)
        self.unblock.wait()
        return super().status(provision)

    def create(self, provision: Provision) -> None:
        self.creates += 1
        if self.creates == 1:
            raise OSError("connection reset by the backend")


def test_get_answers_within_its_deadline_and_a_failed_create_is_retried_by_get(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 items 4 and 11: a teardown's GetTask waited for its destroy up to 0.7 x DeleteTask's
    deadline (flyteplugins fails a task after 5 GetTasks past theirs); a create error escaped CreateTask
    as a retryable failure, with 0 retries by default."""
    provisioner = SlowProvisioner()
    monkeypatch.setattr(connector.provisioning, "_made", (Settings(get_wait_seconds=0.3), provisioner))
    monkeypatch.setattr(connector, "resolve_spec",
                        lambda *args: DataServiceSpec(graph_uri="s3://graphs/g", partitions=1))
    served, teardown = DataServiceConnector(), connector.DataServiceTeardownConnector()
    template = template_of(DataServiceTask(name="graph", config=DataServiceConfig(graph_uri="s3://graphs/g")))

    async def calls() -> tuple[FleetMeta, Resource, Resource, Resource]:
        meta = await mirror_async_methods(served.create, task_template=template, output_prefix="")
        absent = await asyncio.wait_for(mirror_async_methods(served.get, resource_meta=meta), HANG_GUARD)
        waiting = await asyncio.wait_for(mirror_async_methods(served.get, resource_meta=meta), HANG_GUARD)
        release = connector.TeardownMeta(service=meta.name, owner="local/local")
        releasing = await asyncio.wait_for(mirror_async_methods(teardown.get, resource_meta=release),
                                           HANG_GUARD)
        provisioner.unblock.set()
        return meta, absent, waiting, releasing

    meta, absent, waiting, releasing = asyncio.run(calls())
    assert not meta.error and provisioner.creates == 2  # CreateTask answered; get() created it again
    assert absent.phase == TaskExecution.QUEUED
    # INITIALIZING, whose message propeller passes on (RUNNING's it drops: flyteplugins v1.16.0
    # webapi/connector/plugin.go Status()).
    assert waiting.phase == TaskExecution.INITIALIZING and "still going on after 0.3s" in waiting.message
    assert releasing.phase == TaskExecution.INITIALIZING
    assert f"releasing {meta.name} is still going on" in releasing.message
