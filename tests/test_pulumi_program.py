"""The connector's inline fleet program under mocks: what a `pulumi up` of one execution declares."""

from __future__ import annotations

import time
from typing import Any

import yaml

from flyte_agent.provisioner import Provision
from flyte_agent.pulumi_provisioner import fleet_program
from flyte_agent.settings import Settings
from infra.config import StackConfig, load_stack_config, stack_config_from_mapping, stack_path
from infra.datacenter import program
from infra.k8s_schema import validate_manifests
from infra.render import render
from infra.spec import DataServiceSpec


def test_fleet_program_renders_valid_objects_in_the_namespace_and_exports_endpoints() -> None:
    settings = Settings(backend="pulumi", namespace="fleets", image="reg.example/graph-engine:1")
    spec = DataServiceSpec(graph_uri="s3://graphs/cora", partitions=4, replicas=2)
    p = Provision(name="run-x-n0", spec=spec, owner="proj/dev", execution="x", created_at=time.time())
    rendered = render(fleet_program(p, settings), stack="run-x-n0", project="graphfleet-fleets")

    assert validate_manifests(rendered.manifests()) == []
    assert {m["metadata"]["namespace"] for m in rendered.manifests()} == {"fleets"}
    assert rendered.of_type("pulumi:providers:kubernetes")[0].inputs["namespace"] == "fleets"
    assert rendered.outputs["endpoints"] == [
        f"run-x-n0-{i}.run-x-n0.fleets.svc.cluster.local:50051" for i in range(2)]
    assert rendered.outputs["endpoints_env"] == ",".join(rendered.outputs["endpoints"])
    sts = rendered.one("StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/graph-engine:1"


def _connector_settings(datacenter: StackConfig) -> Settings:
    """What a connector replica of this datacenter reads: its Deployment's plain env."""
    deployment = render(lambda: program(datacenter), stack=datacenter.datacenter.name).one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return Settings.from_env({e["name"]: e["value"] for e in container["env"] if "value" in e})


def _fleet_pod(settings: Settings) -> dict[str, Any]:
    p = Provision(name="run-y-n0", spec=DataServiceSpec(graph_uri="s3://graphs/cora", partitions=2),
                  owner="proj/dev", execution="y", created_at=time.time())
    fleet = render(fleet_program(p, settings), stack="run-y-n0", project="graphfleet-fleets")
    assert validate_manifests(fleet.manifests()) == []
    pod: dict[str, Any] = fleet.one("StatefulSet")["spec"]["template"]["spec"]
    return pod


def test_the_stack_placement_and_env_reach_every_ephemeral_fleet() -> None:
    """Stack file -> connector Deployment env -> Settings -> the provisioner's fleet program."""
    pod = _fleet_pod(_connector_settings(load_stack_config(stack_path("ltx1"))))

    assert pod["nodeSelector"] == {"node.ltx1.example.com/pool": "highmem"}
    assert pod["tolerations"] == [{"key": "node.ltx1.example.com/highmem", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    server_env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert server_env["AWS_ENDPOINT_URL"] == "http://minio.ltx1.example.com:9000"
    assert "serviceAccountName" not in pod  # ltx1 names none: the namespace default, no token


def test_a_service_account_in_the_stack_reaches_shared_and_ephemeral_fleets() -> None:
    raw = yaml.safe_load(stack_path("lva1").read_text())["config"]
    raw["graphfleet:graphEngineServiceAccount"] = "graph-reader"
    config = stack_config_from_mapping(raw, "lva1", "lva1")
    shared = render(lambda: program(config), stack="lva1").of_kind("StatefulSet")

    pod = _fleet_pod(_connector_settings(config))

    assert {s["spec"]["template"]["spec"].get("serviceAccountName") for s in shared} == {"graph-reader"}
    assert pod["serviceAccountName"] == "graph-reader"
    assert pod["nodeSelector"] == {"karpenter.sh/nodepool": "graph-engine-cpu"}
