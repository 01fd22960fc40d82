"""Log links, the fleet listing, `graphfleet fleets` and the fleet gauges on the Pulumi backend,
through the Automation API seam (tests/fake_pulumi.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from flyte_agent.connector import fleet_links
from flyte_agent.log_links import LogTemplate
from flyte_agent.metrics import FleetCollector
from flyte_agent.provisioner import Phase, ServerPhase
from tests import fake_pulumi
from tests.test_pulumi_provisioner import backend, make, ready_fleet, settings  # noqa: F401

DASHBOARD = LogTemplate(displayName="Kubernetes", templateUris=[
    "https://dash/#/log/{{ .namespace }}/{{ .podName }}/pod?container={{ .containerName }}"])


def test_listing_links_and_gauges_of_pulumi_fleets(backend: tuple[str, Path], make) -> None:  # noqa: F811
    provisioner = make()
    ups = REGISTRY.get_sample_value("graphfleet_pulumi_operations_total",
                                    {"operation": "up", "outcome": "succeeded"}) or 0
    fleets = [ready_fleet(provisioner, name) for name in ("gf-list-a", "gf-list-b")]
    assert REGISTRY.get_sample_value("graphfleet_pulumi_operations_total",
                                     {"operation": "up", "outcome": "succeeded"}) == ups + 2

    listed = {f.name: f for f in provisioner.fleets()}
    assert sorted(listed) == ["gf-list-a", "gf-list-b"]
    a = listed["gf-list-a"]
    assert (a.owner, a.execution, a.phase, a.replicas) == ("proj/dev", "exec-gf-list-a", Phase.READY, 1)
    assert a.expires_at == int(fleets[0].expires_at) and a.created_at > 0
    assert [(s.pod, s.namespace, s.container, s.phase) for s in a.servers] == [
        ("gf-list-a-0", "graphfleet", "graph-engine", ServerPhase.UNKNOWN)]

    # GetTask's links: the server pod's, and the connector replica's that ran the Pulumi operation.
    status = provisioner.status(fleets[0])
    with_templates = settings(backend, log_templates=[DASHBOARD])
    links = fleet_links(with_templates, fleets[0], status)
    assert links[0].name == f"server 0 ({status.endpoints[0]}): Kubernetes"
    assert links[0].uri == "https://dash/#/log/graphfleet/gf-list-a-0/pod?container=graph-engine"
    assert links[1].name.startswith("pulumi operation (") and "container=connector" in links[1].uri

    registry = CollectorRegistry()
    registry.register(FleetCollector("pulumi", lambda: (time.time(), provisioner.fleets())))
    assert registry.get_sample_value("graphfleet_fleets", {"backend": "pulumi", "phase": "ready"}) == 2
    assert registry.get_sample_value("graphfleet_fleets", {"backend": "pulumi", "phase": "failed"}) == 0

    # The operator's command, as a separate process with the connector's settings.
    url, cli = backend
    env = {**os.environ, "GRAPHFLEET_BACKEND": "pulumi", "GRAPHFLEET_PULUMI_BACKEND_URL": url,
           "GRAPHFLEET_PULUMI_COMMAND": str(cli)}
    shown = subprocess.run([sys.executable, "-m", "flyte_agent.cli", "fleets", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert [(f["name"], f["owner"], f["phase"], f["endpoints"]) for f in json.loads(shown.stdout)] == [
        (name, "proj/dev", "ready", listed[name].endpoints) for name in ("gf-list-a", "gf-list-b")]

    provisioner.delete(fleets[1].name, fleets[1].owner)
    assert [f.name for f in provisioner.fleets()] == ["gf-list-a"]
    collected = REGISTRY.get_sample_value("graphfleet_gc_collected_total", {"backend": "pulumi"}) or 0
    # gc collects the expired fleet, and b's tombstone too when b's expiry (its create time + TTL: a
    # second after a's on a fast machine) has passed as well.
    now = int(fleets[0].expires_at) + 1
    expected = ["gf-list-a", *(["gf-list-b"] if int(fleets[1].expires_at) <= now else [])]
    assert provisioner.gc(now) == expected
    assert provisioner.fleets() == []
    assert REGISTRY.get_sample_value("graphfleet_gc_collected_total",
                                     {"backend": "pulumi"}) == collected + len(expected)


def test_scrapes_start_no_cli_process_and_say_how_old_the_fleet_gauges_are(
        backend: tuple[str, Path], make) -> None:  # noqa: F811
    """The gauges were a listing made on the scrape (a `stack tag ls` and `stack history` per stack,
    and `stack output` per ready one, every 60 s of scrapes): now they are the sweep's last listing,
    made after its gc pass, and a scrape reads it with its age."""
    url, _ = backend
    provisioner = make()
    for name in ("gf-gauge-a", "gf-gauge-b"):
        ready_fleet(provisioner, name)
    assert provisioner.observed_fleets() is None  # no sweep here: nothing observed, nothing listed
    registry = CollectorRegistry()
    registry.register(FleetCollector("pulumi", provisioner.observed_fleets))
    assert registry.get_sample_value("graphfleet_fleets", {"backend": "pulumi", "phase": "ready"}) is None

    swept = make(gc_interval_seconds=0.2)
    deadline = time.monotonic() + 60
    while (swept.observed_fleets() or (0, []))[1] == []:
        assert time.monotonic() < deadline, "the sweep never listed the fleets"
        time.sleep(0.1)
    swept.close()  # the sweep stops: from here on only scrapes could start CLI processes
    registry = CollectorRegistry()
    registry.register(FleetCollector("pulumi", swept.observed_fleets))
    before = len(fake_pulumi.calls(url))
    for _ in range(5):
        assert registry.get_sample_value("graphfleet_fleets", {"backend": "pulumi", "phase": "ready"}) == 2
        age = registry.get_sample_value("graphfleet_fleets_age_seconds", {"backend": "pulumi"})
        assert age is not None and 0 <= age < 60
    assert len(fake_pulumi.calls(url)) == before, "a scrape started pulumi CLI processes"

    # A replica lists once as it starts, so its gauges do not wait for the first gc pass (300 s).
    started = make(gc_interval_seconds=3600)
    while started.observed_fleets() is None:
        assert time.monotonic() < deadline, "a starting replica never listed the fleets"
        time.sleep(0.1)
    assert [f.phase.value for f in started.observed_fleets()[1]] == ["ready", "ready"]
