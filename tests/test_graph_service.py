"""GraphDataService rendered under Pulumi mocks, every object checked against the Kubernetes schema;
plus the rendering and schema harness it stands on (infra.render, infra.k8s_schema)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra import names
from infra.contract import CLIENT_LABEL, ENDPOINTS_ENV, assign_partitions
from infra.graph_service import (
    POD_INDEX_LABEL,
    TYPE_TOKEN,
    GraphDataService,
    GraphDataServiceArgs,
    Placement,
    Toleration,
)
from infra.k8s_schema import validate_manifests
from infra.render import Rendered, render
from infra.spec import DataServiceSpec

RenderValid = Callable[..., Rendered]


def _spec(**overrides: Any) -> DataServiceSpec:
    return DataServiceSpec.model_validate({"graph_uri": "s3://graphs/cora", "replicas": 2, "partitions": 4,
                                           **overrides})


def _args(**overrides: Any) -> GraphDataServiceArgs:
    fields: dict[str, Any] = {"name": "cora-run", "namespace": "ml", "spec": _spec(), "image": "reg/ge:1"}
    return GraphDataServiceArgs(**{**fields, **overrides})


def _fleet(render_valid: RenderValid, args: GraphDataServiceArgs) -> Rendered:
    def program() -> None:
        service = GraphDataService("fleet", args)
        pulumi.export("endpoints", service.endpoints)
        pulumi.export("endpoints_env", service.endpoints_env)
        pulumi.export("service_name", service.service_name)
        pulumi.export("namespace", service.namespace)
    return render_valid(program)


def _container(rendered: Rendered) -> dict[str, Any]:
    containers = rendered.one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_headless_service_selects_the_statefulset_pods(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args())
    service, sts = rendered.one("Service"), rendered.one("StatefulSet")
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses")  # unready (loading) shards get no DNS
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["name"] == "grpc" and port["port"] == 50051
    assert port["targetPort"] in [p["name"] for p in _container(rendered)["ports"]]


def test_component_token_parents_and_labels(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args(spec=_spec(labels={"team": "gnn"}), labels={"cost-center": "42"}))
    [component] = rendered.of_type(TYPE_TOKEN)
    children = rendered.children_of(component.urn)
    assert sorted(c.inputs["kind"] for c in children) == [
        "NetworkPolicy", "PodDisruptionBudget", "Service", "StatefulSet"]
    for manifest in rendered.manifests():
        labels = manifest["metadata"]["labels"]
        assert manifest["metadata"]["namespace"] == "ml"
        assert labels["app.kubernetes.io/name"] == "graph-engine"
        assert labels["app.kubernetes.io/instance"] == "cora-run"
        assert labels["app.kubernetes.io/managed-by"] == "graphfleet"
        assert labels["team"] == "gnn" and labels["cost-center"] == "42"


@pytest.mark.parametrize(("replicas", "partitions", "expected"), [
    (1, 1, [[0]]),
    (2, 2, [[0], [1]]),
    (3, 8, [[0, 3, 6], [1, 4, 7], [2, 5]]),
    (4, 4, [[0], [1], [2], [3]]),
])
def test_every_partition_is_served_by_exactly_one_pod(
        render_valid: RenderValid, replicas: int, partitions: int, expected: list[list[int]]) -> None:
    rendered = _fleet(render_valid, _args(spec=_spec(replicas=replicas, partitions=partitions)))
    sts = rendered.one("StatefulSet")
    container = _container(rendered)
    command = container["command"]
    assert command[:3] == ["python", "-m", "graph_engine.server"]
    assert _flag(command, "--data-dir") == "s3://graphs/cora"
    assert sts["spec"]["replicas"] == replicas
    # The ordinal is the pod's own index, through the downward API: one pod per ordinal.
    ordinal_ref = _flag(command, "--ordinal")
    env = {e["name"]: e for e in container["env"]}
    assert ordinal_ref.startswith("$(") and ordinal_ref.endswith(")")
    field_path = env[ordinal_ref[2:-1]]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field_path == f"metadata.labels['{POD_INDEX_LABEL}']"
    served = assign_partitions(int(_flag(command, "--replicas")), int(_flag(command, "--partitions")))
    assert served == expected
    assert sorted(p for shard in served[:sts["spec"]["replicas"]] for p in shard) == list(range(partitions))


def test_probes_are_plaintext_grpc_and_startup_allows_the_load_budget(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args(spec=_spec(startup_seconds=95, port=6000)))
    container = _container(rendered)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 6000}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 95
    assert container["ports"] == [{"name": "grpc", "containerPort": 6000, "protocol": "TCP"}]
    timeout = int(rendered.one("StatefulSet")["metadata"]["annotations"]["pulumi.com/timeoutSeconds"])
    assert timeout > 95


def test_restricted_security_context_with_a_writable_scratch_volume(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args(spec=_spec(scratch_size="5Gi")))
    pod = rendered.one("StatefulSet")["spec"]["template"]["spec"]
    container = _container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    [volume] = pod["volumes"]
    assert volume["emptyDir"] == {"sizeLimit": "5Gi"}
    [mount] = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == env["TMPDIR"] == mount["mountPath"]


def test_resources_default_limits_to_requests_and_placement_applies(render_valid: RenderValid) -> None:
    placement = Placement(node_selector={"pool": "cpu"},
                          tolerations=(Toleration("pool", "Equal", "cpu", "NoSchedule"),))
    rendered = _fleet(render_valid, _args(spec=_spec(cpu="2", memory="4Gi", memory_limit="6Gi"),
                                          placement=placement))
    resources = _container(rendered)["resources"]
    assert resources["requests"]["cpu"] == "2" and resources["requests"]["memory"] == "4Gi"
    assert resources["limits"] == {"cpu": "2", "memory": "6Gi"}
    pod = rendered.one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"] == [
        {"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}]
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_pdb_allows_no_voluntary_eviction_of_an_ephemeral_shard(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args())
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 0
    # A shard that is not Ready serves nothing: it must not hold a drain up.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = rendered.one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_pdb_of_a_long_lived_service_lets_a_drain_move_one_shard_at_a_time(render_valid: RenderValid) -> None:
    # maxUnavailable 0 on a service with no TTL would block every node drain forever.
    pdb = _fleet(render_valid, _args(long_lived=True)).one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_network_policy_admits_only_labelled_clients_on_the_port(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args(spec=_spec(port=7000)))
    policy = rendered.one("NetworkPolicy")["spec"]
    pod_labels = rendered.one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 7000}]


def test_outputs_list_endpoints_in_ordinal_order(render_valid: RenderValid) -> None:
    rendered = _fleet(render_valid, _args(spec=_spec(replicas=3, partitions=3)))
    sts = rendered.one("StatefulSet")["metadata"]["name"]
    svc = rendered.one("Service")["metadata"]["name"]
    expected = [f"{sts}-{i}.{svc}.ml.svc.cluster.local:50051" for i in range(3)]
    assert rendered.outputs == {"endpoints": expected, "endpoints_env": ",".join(expected),
                                "service_name": svc, "namespace": "ml"}
    assert ENDPOINTS_ENV == "GRAPHFLEET_ENDPOINTS"


def test_object_count_does_not_grow_with_replicas(render_valid: RenderValid) -> None:
    small = _fleet(render_valid, _args(spec=_spec(replicas=1, partitions=64)))
    large = _fleet(render_valid, _args(spec=_spec(replicas=64, partitions=64)))
    assert len(small.resources) == len(large.resources) == 5
    assert len(large.outputs["endpoints"]) == 64


def test_long_names_are_shortened_deterministically_within_limits(render_valid: RenderValid) -> None:
    long_name = "wf-" + "a1b2c3d4e5" * 6 + "-train"
    assert len(long_name) > 63
    first = _fleet(render_valid, _args(name=long_name))
    again = _fleet(render_valid, _args(name=long_name))
    other = _fleet(render_valid, _args(name=long_name + "x"))
    assert first.manifests() == again.manifests()
    sts = first.one("StatefulSet")["metadata"]["name"]
    assert len(sts) <= 52 and sts != other.one("StatefulSet")["metadata"]["name"]
    for manifest in first.manifests():
        name = manifest["metadata"]["name"]
        assert len(name) <= 63
        names.check_dns1035_label(name, manifest["kind"])
        for value in manifest["metadata"]["labels"].values():
            assert len(value) <= 63
    svc = first.one("Service")["metadata"]["name"]
    assert first.one("StatefulSet")["spec"]["serviceName"] == svc
    for endpoint in first.outputs["endpoints"]:
        pod, service = endpoint.split(".")[:2]
        assert service == svc and len(pod) <= 63


@pytest.mark.parametrize(("overrides", "message"), [
    ({"spec": DataServiceSpec(graph_uri="s3://graphs/cora", replicas=2)},
     r"spec\.partitions is not set: .*with_partitions"),
    ({"spec": DataServiceSpec(reuse="shared-cora")}, r"needs spec\.graph_uri"),
    ({"spec": _spec(graph_uri="/data/cora")}, r"spec\.graph_uri: .*use s3://"),
    ({"image": None}, r"GraphDataServiceArgs\.image"),
    ({"name": "Cora_Run"}, r"GraphDataServiceArgs\.name: 'Cora_Run'"),
    ({"namespace": "x" * 64}, r"GraphDataServiceArgs\.namespace"),
    ({"labels": {"app.kubernetes.io/name": "mine"}}, r"GraphDataServiceArgs\.labels: .*reserved"),
    ({"env": {"1BAD": "x"}}, r"GraphDataServiceArgs\.env: '1BAD'"),
])
def test_bad_args_fail_before_any_resource_is_declared(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _args(**overrides)


def test_toleration_rejects_a_value_with_exists() -> None:
    with pytest.raises(ValueError, match="operator 'Exists' takes no value"):
        Toleration("pool", "Exists", "cpu")


# The harness: infra.render and infra.k8s_schema.

def test_render_runs_are_isolated_and_numbers_stay_ints() -> None:
    def program() -> None:
        cm = k8s.core.v1.ConfigMap("cm", metadata={"name": "c", "namespace": "ns"},
                                   data={"v": pulumi.Config().require("value")})
        svc = k8s.core.v1.Service("svc", metadata={"name": "s", "namespace": "ns"},
                                  spec={"ports": [{"port": 8080}]})
        pulumi.export("value", cm.data["v"])
        pulumi.export("port", svc.spec.ports[0].port)
        pulumi.export("id", svc.id)

    first = render(program, config={"value": "one"})
    second = render(program, stack="prod", config={"graphfleet:value": "two"})
    assert first.outputs == {"value": "one", "port": 8080, "id": "ns/s"}
    assert second.outputs["value"] == "two"
    assert [r.name for r in second.resources] == [r.name for r in first.resources]
    port = second.one("Service")["spec"]["ports"][0]["port"]
    assert port == 8080 and isinstance(port, int)
    assert "prod" in second.resources[0].urn


def test_render_propagates_program_errors_and_refuses_other_threads() -> None:
    def broken() -> None:
        raise RuntimeError("bad program")

    with pytest.raises(RuntimeError, match="bad program"):
        render(broken)
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(errors, lambda: render(lambda: None)))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def _capture(errors: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - handed to the test thread
        errors.append(err)


def test_schema_errors_name_kind_name_and_field_path() -> None:
    manifests = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
         "spec": {"ports": [{"port": 80, "tagetPort": 81}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "sts"},
         "spec": {"replicas": "2", "selector": {}, "template": {}}},
    ]
    errors = validate_manifests(manifests)
    assert any(e.startswith("Service/svc: spec.ports[0]: ") and "tagetPort" in e for e in errors)
    assert any(e.startswith("StatefulSet/sts: spec.replicas: ") for e in errors)


def test_custom_resources_are_checked_or_reported_never_passed_silently() -> None:
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ResourceFlavor", "metadata": {"name": "gpu"},
              "spec": {"nodeLabels": {"pool": "gpu"},
                       "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}}
    assert validate_manifests([flavor]) == []
    typo = {**flavor, "spec": {"nodeLabel": {"pool": "gpu"}}}
    typo_errors = validate_manifests([typo])
    assert any(e.startswith("ResourceFlavor/gpu: spec: ") and "nodeLabel" in e for e in typo_errors)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    [error] = validate_manifests([unknown])
    assert error.startswith("Widget/w: not schema-checked")
