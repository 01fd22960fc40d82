"""Datacenter under mocks: namespaces, pools, shared services and the connector, composed from config."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infra import policy
from infra.config import ConfigError, load_stack_config, stack_config_from_mapping, stack_path
from infra.datacenter import config_from_pulumi, program
from infra.render import Rendered, render


def test_composes_everything_with_restricted_namespaces(render_valid: Callable[..., Rendered]) -> None:
    config = load_stack_config(stack_path("ltx1"))
    rendered = render_valid(lambda: program(config), stack="ltx1")
    namespaces = {n["metadata"]["name"]: n["metadata"]["labels"] for n in rendered.of_kind("Namespace")}
    assert set(namespaces) == {"graphfleet-system", "graphfleet-data", "graphfleet-shared", "ml-training"}
    assert all(labels["pod-security.kubernetes.io/enforce"] == "restricted" for labels in namespaces.values())
    sts = rendered.one("StatefulSet")
    # Shared services live apart from the connector's fleets, where its Role does not reach.
    assert sts["metadata"]["namespace"] == "graphfleet-shared"
    roles = {r["metadata"]["namespace"]: r for r in rendered.of_kind("Role")}
    assert roles["graphfleet-data"]["metadata"]["name"] == "graphfleet-connector"
    assert "graphfleet-shared" not in roles
    # Elsewhere (the graph clients' namespaces) the connector may only read executions' FlyteWorkflows
    # (flyte_agent/executions.py).
    assert all(r["rules"] == [{"apiGroups": ["flyte.lyft.com"], "resources": ["flyteworkflows"],
                               "verbs": ["get"]}] for ns, r in roles.items() if ns != "graphfleet-data")
    assert sts["spec"]["replicas"] == 8
    pod = sts["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.ltx1.example.com/pool": "highmem"}
    assert pod["tolerations"] == [{"key": "node.ltx1.example.com/highmem", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    outputs = rendered.outputs
    assert len(outputs["shared_services"]["member-graph"]) == 8
    assert outputs["shared_services"]["member-graph"][0] == \
        "member-graph-0.member-graph.graphfleet-shared.svc.cluster.local:50051"
    assert outputs["queues"]["a100"]["feed-ranking"] == "a100-feed-ranking"
    # Static GPU nodes get their taint from the kubelet, not from a patch of the atomic taints list.
    assert outputs["kubelet_taints"] == {"a100": ["nvidia.com/gpu=present:NoSchedule"],
                                         "v100": ["nvidia.com/gpu=v100:NoSchedule"]}
    # A shared service lives until removed: its PDB must let a node drain through, one shard at a time.
    shared_pdbs = [p for p in rendered.of_kind("PodDisruptionBudget")
                   if p["metadata"]["namespace"] == "graphfleet-shared"]
    assert [p["spec"]["maxUnavailable"] for p in shared_pdbs] == [1]
    # The connector is told the shared services' endpoints, for tasks that `reuse` them.
    env = {e["name"]: e.get("value") for e in
           rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "member-graph-7.member-graph" in env["GRAPHFLEET_SHARED_SERVICES"]
    components = {r.type for r in rendered.resources if not r.custom}
    assert components == {"graphfleet:datacenter:Datacenter", "graphfleet:gpu:GpuNodePool",
                          "graphfleet:connector:FlyteConnector", "graphfleet:graph:GraphDataService"}


def test_policy_catches_an_uncovered_partition(render_valid: Callable[..., Rendered]) -> None:
    config = load_stack_config(stack_path("lva1"))
    manifests = render_valid(lambda: program(config), stack="lva1").manifests()
    sts = next(m for m in manifests if m["kind"] == "StatefulSet" and m["metadata"]["name"] == "job-graph")
    sts["spec"]["replicas"] = 3
    assert [str(v) for v in policy.check(manifests)] == [
        "partition-coverage: StatefulSet/graphfleet-shared/job-graph: servers think there are 4 replicas but "
        "the StatefulSet runs 3: partitions would be missed"]


def test_the_pulumi_program_reads_the_engine_config_and_refuses_bad_config() -> None:
    import json

    import yaml

    raw = yaml.safe_load(stack_path("lva1").read_text())["config"]
    as_engine = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    rendered = render(lambda: program(config_from_pulumi()), stack="lva1", config=as_engine)
    assert len(rendered.of_kind("StatefulSet")) == 2

    raw["graphfleet:connector"]["replicas"] = 0
    bad = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    with pytest.raises(ConfigError, match=r"^stacks/Pulumi.lva1.yaml: graphfleet:connector"):
        render(lambda: program(config_from_pulumi()), stack="lva1", config=bad)


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["graphfleet:connector"].update(replicas=0),
     "graphfleet:connector.replicas: must be at least 2"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(replicas=33), "exceeds partitions (32)"),
])
def test_bad_config_declares_no_resource(change: Callable[[dict], None], message: str) -> None:
    import yaml

    raw = yaml.safe_load(stack_path("ltx1").read_text())["config"]
    change(raw)
    declared: list[str] = []

    def attempt() -> None:
        try:
            program(stack_config_from_mapping(raw, "ltx1", "ltx1"))
        except ConfigError as exc:
            declared.append(str(exc))

    rendered = render(attempt, stack="ltx1")
    assert rendered.resources == []
    assert message in declared[0]


def test_the_connector_may_reach_the_fleets_it_health_checks(render_valid: Callable[..., Rendered]) -> None:
    """The provisioner checks every endpoint before READY; each fleet's NetworkPolicy admits only
    pods matching its selector, so the connector's pods must match every ingress rule's."""
    config = load_stack_config(stack_path("lva1"))
    rendered = render_valid(lambda: program(config), stack="lva1")
    connector_pods = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in rendered.of_kind("NetworkPolicy")
                if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "graph-engine"]
    assert len(policies) == len(config.shared_services)
    for policy_ in policies:
        for source in policy_["spec"]["ingress"][0]["from"]:
            required = source["podSelector"]["matchLabels"]
            assert required.items() <= connector_pods.items(), (policy_["metadata"]["name"], required)


def test_the_connector_does_not_wait_for_shared_graphs_to_load() -> None:
    """Shared services' endpoints are deterministic DNS names: the connector's Deployment is built from
    plain values, so `up` declares it at once instead of after every StatefulSet is ready (which may
    take each one's startupSeconds)."""
    from infra.datacenter import plan
    from infra.graph_service import FleetNames, GraphDataService, GraphDataServiceArgs, endpoints

    config = load_stack_config(stack_path("ltx1"))
    checked = plan(config)
    shared = checked.connector.shared_services
    assert isinstance(shared, dict) and isinstance(shared["member-graph"], list)
    (args,) = checked.shared
    assert shared["member-graph"] == endpoints(FleetNames.of(args), 8, 50051)
    # What the component itself exports agrees with what the connector was told.
    exported: dict[str, list[str]] = {}

    def one_service() -> None:
        GraphDataService("member-graph", GraphDataServiceArgs(
            name=args.name, namespace=args.namespace, spec=args.spec, image=args.image)
        ).endpoints.apply(lambda e: exported.setdefault("e", e))

    render(one_service)
    assert exported["e"] == shared["member-graph"]


def test_shared_services_need_a_namespace_of_their_own() -> None:
    raw = {"graphfleet:namespaces": {"dataServices": "fleets", "sharedServices": "fleets"}}
    base = yaml_config("ltx1")
    with pytest.raises(ConfigError, match="graphfleet:namespaces: .*sharedServices is 'fleets'.*could "
                                          "modify or delete the long-lived shared services"):
        stack_config_from_mapping({**base, **raw}, "ltx1", "ltx1")


def yaml_config(stack: str) -> dict:
    import yaml

    return yaml.safe_load(stack_path(stack).read_text())["config"]


def test_every_object_goes_through_the_datacenters_explicit_provider(
        render_valid: Callable[..., Rendered]) -> None:
    config = load_stack_config(stack_path("ltx1"))
    rendered = render_valid(lambda: program(config), stack="ltx1")
    (provider,) = rendered.of_type("pulumi:providers:kubernetes")
    assert provider.inputs["context"] == "ltx1-prod"
    # Creates fail on an existing object (pulumi-kubernetes >= 4.29): this stack owns what it creates.
    assert provider.inputs.get("upsertExistingObjects") in (False, "false")
    objects = [r for r in rendered.resources if r.is_kubernetes_object]
    assert objects and all(r.provider and r.provider.startswith(provider.urn + "::") for r in objects)
    # Namespaces exist before the stack (they hold the operator's Secrets): patched, never created.
    namespaces = {r.type for r in objects if r.inputs["kind"] == "Namespace"}
    assert namespaces == {"kubernetes:core/v1:NamespacePatch"}


def test_a_stack_without_a_kubernetes_context_is_refused() -> None:
    raw = yaml_config("ltx1")
    del raw["kubernetes:context"]
    with pytest.raises(ConfigError, match=r"^ltx1: kubernetes:context: not set; name the kubeconfig context"):
        stack_config_from_mapping(raw, "ltx1", "ltx1")


def test_flyte_project_namespaces_get_the_teams_queue_and_reach_the_fleets(
        render_valid: Callable[..., Rendered]) -> None:
    """Flyte runs task pods in `<project>-<domain>` namespaces: the team's LocalQueue must be there, its
    ClusterQueue must admit them, and the fleets' NetworkPolicies must admit their graph clients (by
    namespace as well as label)."""
    config = load_stack_config(stack_path("ltx1"))
    rendered = render_valid(lambda: program(config), stack="ltx1")
    flyte = ["feed-ranking-development", "feed-ranking-production"]
    queues = {(q["metadata"]["namespace"], q["metadata"]["name"]) for q in rendered.of_kind("LocalQueue")}
    local = rendered.outputs["queues"]["a100"]["feed-ranking"]
    assert {(ns, local) for ns in ["ml-training", *flyte]} <= queues
    (cluster_queue,) = [q for q in rendered.of_kind("ClusterQueue")
                        if q["metadata"]["name"].endswith("feed-ranking")]
    (selector,) = cluster_queue["spec"]["namespaceSelector"]["matchExpressions"]
    assert selector == {"key": "kubernetes.io/metadata.name", "operator": "In",
                        "values": sorted(["ml-training", *flyte])}
    fleet_policy = next(p for p in rendered.of_kind("NetworkPolicy")
                        if p["metadata"]["name"] == "member-graph")
    (source,) = fleet_policy["spec"]["ingress"][0]["from"]
    admitted = source["namespaceSelector"]["matchExpressions"][0]["values"]
    assert admitted == sorted(["graphfleet-system", "ml-training", *flyte])
    assert source["podSelector"] == {"matchLabels": {"graphfleet.io/graph-client": "true"}}


def test_policy_catches_a_pod_no_network_policy_selects(render_valid: Callable[..., Rendered]) -> None:
    config = load_stack_config(stack_path("lva1"))
    manifests = render_valid(lambda: program(config), stack="lva1").manifests()
    assert policy.check(manifests) == []
    without = [m for m in manifests if not (m["kind"] == "NetworkPolicy"
                                             and m["metadata"]["namespace"] == "graphfleet-system")]
    assert [str(v) for v in policy.check(without)] == [
        "network-policy-coverage: Deployment/graphfleet-system/graphfleet-connector: no NetworkPolicy in its "
        "namespace selects its pods"]
