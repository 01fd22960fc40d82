"""The connector's inline fleet program under mocks: what a `pulumi up` of one execution declares."""

from __future__ import annotations

import time

from flyte_agent.provisioner import Provision
from flyte_agent.pulumi_provisioner import fleet_program
from flyte_agent.settings import Settings
from infra.k8s_schema import validate_manifests
from infra.render import render
from infra.spec import DataServiceSpec


def test_fleet_program_renders_valid_objects_in_the_namespace_and_exports_endpoints() -> None:
    settings = Settings(backend="pulumi", namespace="fleets", image="reg.example/graph-engine:1")
    p = Provision(name="run-x-n0", spec=DataServiceSpec(graph_uri="s3://graphs/cora", partitions=4, replicas=2),
                  owner="proj/dev", execution="x", created_at=time.time())
    rendered = render(fleet_program(p, settings), stack="run-x-n0", project="graphfleet-fleets")

    assert validate_manifests(rendered.manifests()) == []
    assert {m["metadata"]["namespace"] for m in rendered.manifests()} == {"fleets"}
    assert rendered.of_type("pulumi:providers:kubernetes")[0].inputs["namespace"] == "fleets"
    assert rendered.outputs["endpoints"] == [
        f"run-x-n0-{i}.run-x-n0.fleets.svc.cluster.local:50051" for i in range(2)]
    assert rendered.outputs["endpoints_env"] == ",".join(rendered.outputs["endpoints"])
    sts = rendered.one("StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/graph-engine:1"
