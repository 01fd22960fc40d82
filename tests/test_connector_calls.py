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
from flytekit.extend.backend.utils import mirror_async_methods

from flyte_agent import connector
from flyte_agent.connector import DataServiceConnector, FleetMeta
from flyte_agent.provisioner import Phase, Provision, Status
from flyte_agent.settings import Settings
from graph_engine import store
from infra.spec import DataServiceSpec
from tests.s3_server import moto_s3

HANG_GUARD = 60  # seconds before a call that never gets a thread fails the test instead of hanging it


class BlockingDeletes:
    """A provisioner whose deletes wait (like a running destroy) until the test releases them."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def delete(self, name: str, owner: str, abort: bool = False) -> None:
        self.release.wait()

    def status(self, provision: Provision) -> Status:
        return Status(Phase.READY, ["fleet-0:50051"], message="up")


def test_waiting_deletes_do_not_hold_the_threads_gets_need(monkeypatch: pytest.MonkeyPatch) -> None:
    provisioner = BlockingDeletes()
    monkeypatch.setattr(connector.backend, "_made", (Settings(), provisioner))
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
            provisioner.release.set()
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
