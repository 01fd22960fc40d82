"""Shared fleets by lease: the plain rules, and expiry with the local provisioner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flyte_agent import leases
from flyte_agent.local_provisioner import LocalProvisioner
from flyte_agent.provisioner import Phase
from flyte_agent.settings import Settings
from flyte_agent.shared_fleets import SharedFleets
from graph_engine.convert import convert
from infra.spec import DataServiceSpec
from tests.test_graph_server import ring_graph


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


def test_take_renews_and_drops_expired_leases() -> None:
    held = leases.take({"p/d/old": 5.0}, "p/d/a", now=10.0, ttl_seconds=100)
    assert held == {"p/d/a": 110.0}
    assert leases.take(held, "p/d/a", now=50.0, ttl_seconds=100) == {"p/d/a": 150.0}
    assert leases.drop(held, "p/d/a") == {}


@pytest.mark.slow
def test_a_fleet_stops_when_its_last_lease_expires_or_its_execution_is_released(tmp_path: Path) -> None:
    uri = convert(ring_graph(), str(tmp_path / "ring"), partitions=2)
    provisioner = LocalProvisioner(Settings(state_dir=tmp_path / "state"))
    shares = SharedFleets(tmp_path / "state", provisioner)
    try:
        spec = DataServiceSpec(graph_uri=uri, partitions=2, share="s", ttl_seconds=300)
        now = time.time()
        fleet = shares.acquire("p/d", "s", spec, "p/d/run-a/n0", now)
        shares.acquire("p/d", "s", spec, "p/d/run-b/n0", now + 100)  # run-b's lease ends 100 s later
        assert provisioner.status(fleet).phase is not Phase.ABSENT
        assert shares.sweep(now + 301) == []           # run-b still holds it
        assert shares.release_execution("p/d/run-a", now + 302) == []
        assert shares.sweep(now + 401) == [fleet.name]  # nobody renewed: stopped
        assert provisioner.status(fleet).phase is Phase.ABSENT and not shares.is_shared(fleet.name)
        # Releasing the last holder's execution stops it too.
        fleet = shares.acquire("p/d", "s", spec, "p/d/run-c/n0", now)
        assert shares.release_execution("p/d/run-c", now + 1) == [fleet.name]
        assert provisioner.status(fleet).phase is Phase.ABSENT
    finally:
        provisioner.close()
