"""The connector's inline fleet program under mocks: what a `pulumi up` of one execution declares."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from flyte_agent.fleet_program import fleet_program
from flyte_agent.provisioner import Provision
from flyte_agent.settings import Settings
from infra.config import ConfigError, StackConfig, load_stack_config, stack_config_from_mapping, stack_path
from infra.connector_deployment import PASSPHRASE_VOLUME
from infra.datacenter import program
from infra.graph_service import ENGINE_SERVICE_ACCOUNT
from infra.k8s_schema import validate_manifests
from infra.object_store import CREDENTIALS_DIR
from infra.render import render
from infra.spec import DataServiceSpec


def test_fleet_program_renders_valid_objects_in_the_namespace_and_exports_endpoints() -> None:
    settings = Settings(backend="pulumi", namespace="fleets", image="reg.example/graph-engine:1")
    spec = DataServiceSpec(graph_uri="s3://graphs/cora", partitions=4, replicas=2)
    p = Provision(name="run-x-n0", spec=spec, owner="proj/dev", execution="x", created_at=time.time())
    rendered = render(fleet_program(p, settings), stack="run-x-n0", project="graphfleet-fleets")

    assert validate_manifests(rendered.manifests()) == []
    assert {m["metadata"]["namespace"] for m in rendered.manifests()} == {"fleets"}
    provider = rendered.of_type("pulumi:providers:kubernetes")[0].inputs
    assert provider["namespace"] == "fleets"
    # pulumi-kubernetes >= 4.29 fails a create on an existing object unless the provider upserts: a
    # retried `up` after an interrupted one (pending creates cleared by refresh) must adopt the
    # objects it already made.
    assert provider["upsertExistingObjects"] in (True, "true")
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
    assert server_env["FSSPEC_S3_ENDPOINT_URL"] == "http://minio.ltx1.example.com:9000"
    assert server_env["AWS_SHARED_CREDENTIALS_FILE"] == f"{CREDENTIALS_DIR}/credentials"
    # The credentials are a mounted Secret, never a value in the manifest (nor in Pulumi state).
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "graphfleet-object-store"
    assert pod["serviceAccountName"] == ENGINE_SERVICE_ACCOUNT


def test_connector_and_servers_read_graphs_from_the_same_store() -> None:
    """ltx1 reads graphs from MinIO: the connector (it reads meta.json itself) and every server, shared
    or ephemeral, get the same endpoint and the same mounted credentials."""
    config = load_stack_config(stack_path("ltx1"))
    rendered = render(lambda: program(config), stack="ltx1")
    pods = [rendered.one("Deployment")["spec"]["template"]["spec"],
            rendered.one("StatefulSet")["spec"]["template"]["spec"],
            _fleet_pod(_connector_settings(config))]

    def store_view(pod: dict[str, Any]) -> tuple[Any, ...]:
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        mounted = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        # The connector's own Pulumi passphrase file is not part of the graph store.
        secrets = {v["name"]: v["secret"] for v in pod["volumes"]
                   if "secret" in v and v["name"] != PASSPHRASE_VOLUME}
        return (env.get("FSSPEC_S3_ENDPOINT_URL"), env.get("AWS_SHARED_CREDENTIALS_FILE"),
                env.get("FSSPEC_S3_PROFILE"), {mounted[n]: s for n, s in secrets.items()})

    views = [store_view(pod) for pod in pods]
    assert views[0] == views[1] == views[2]
    assert views[0][0] == "http://minio.ltx1.example.com:9000"
    for manifest in rendered.manifests():
        assert "AWS_SECRET_ACCESS_KEY" not in yaml.safe_dump(manifest)


def test_every_mounted_secret_file_is_readable_by_the_container_group_only() -> None:
    """The kubelet chowns a Secret volume's files to the pod's fsGroup and keeps defaultMode's bits
    (pkg/volume/volume_linux.go): 0440 plus fsGroup = the container's gid reads them, other uids
    do not, and the non-root containers can still read their passphrase, TLS key and credentials."""
    config = load_stack_config(stack_path("ltx1"))
    rendered = render(lambda: program(config), stack="ltx1")
    pods = [m["spec"]["template"]["spec"] for m in rendered.manifests()
            if m.get("kind") in ("Deployment", "StatefulSet")] + [_fleet_pod(_connector_settings(config))]
    checked = 0
    for pod in pods:
        for volume in (v for v in pod["volumes"] if "secret" in v):
            assert volume["secret"]["defaultMode"] == 0o440, volume
            context = pod["securityContext"]
            for container in pod["containers"]:
                gid = container.get("securityContext", {}).get("runAsGroup", context["runAsGroup"])
                assert gid == context["fsGroup"], (volume["name"], container["name"])
            checked += 1
    assert checked >= 3  # the connector's passphrase and credentials, every server's credentials


def test_workload_identity_reaches_both_service_accounts_and_every_fleet() -> None:
    config = load_stack_config(stack_path("lva1"))
    rendered = render(lambda: program(config), stack="lva1")
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]): a
                for a in rendered.of_kind("ServiceAccount")}
    role = "eks.amazonaws.com/role-arn"
    for namespace in ("graphfleet-data", "graphfleet-shared"):
        engine = accounts[(namespace, ENGINE_SERVICE_ACCOUNT)]
        assert engine["metadata"]["annotations"][role].endswith(":role/graphfleet-graph-reader")
        assert engine["automountServiceAccountToken"] is False
    connector = accounts[("graphfleet-system", "graphfleet-connector")]
    assert connector["metadata"]["annotations"][role].endswith(":role/graphfleet-connector")
    shared = rendered.of_kind("StatefulSet")
    assert {s["spec"]["template"]["spec"]["serviceAccountName"] for s in shared} == {ENGINE_SERVICE_ACCOUNT}
    pod = _fleet_pod(_connector_settings(config))
    assert pod["serviceAccountName"] == ENGINE_SERVICE_ACCOUNT
    assert pod["nodeSelector"] == {"karpenter.sh/nodepool": "graph-engine-cpu"}


def test_credentials_in_plain_engine_env_are_refused() -> None:
    raw = yaml.safe_load(stack_path("ltx1").read_text())["config"]
    raw["graphfleet:graphEngineEnv"] = {"AWS_SECRET_ACCESS_KEY": "hunter2"}
    with pytest.raises(ConfigError, match=r"graphEngineEnv: AWS_SECRET_ACCESS_KEY: looks like a credential"):
        stack_config_from_mapping(raw, "stacks/Pulumi.ltx1.yaml", "ltx1")
    raw["graphfleet:graphEngineEnv"] = {"AWS_ENDPOINT_URL": "http://elsewhere:9000"}
    with pytest.raises(ConfigError, match=r"objectStore.endpoint"):
        stack_config_from_mapping(raw, "stacks/Pulumi.ltx1.yaml", "ltx1")


def test_ephemeral_fleets_admit_graph_clients_only_from_the_stacks_namespaces() -> None:
    settings = _connector_settings(load_stack_config(stack_path("ltx1")))
    p = Provision(name="run-z-n0", spec=DataServiceSpec(graph_uri="s3://graphs/cora", partitions=2),
                  owner="proj/dev", execution="z", created_at=time.time())
    fleet = render(fleet_program(p, settings), stack="run-z-n0", project="graphfleet-fleets")
    (source,) = fleet.one("NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert source["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "feed-ranking-development", "feed-ranking-production", "graphfleet-system", "ml-training"]
