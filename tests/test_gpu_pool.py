"""GpuNodePool under mocks: node labelling or Karpenter, Kueue queues per team, schema-valid."""

from __future__ import annotations

from collections.abc import Callable

import pulumi
import pytest

from infra import policy
from infra.config import POOL_LABEL, GpuPool, load_stack_config, stack_path
from infra.gpu_pool import GpuNodePool, GpuNodePoolArgs
from infra.render import Rendered


def _pool(stack: str, index: int) -> GpuPool:
    return load_stack_config(stack_path(stack)).gpu_pools[index]


def _render(render_valid: Callable[..., Rendered], pool: GpuPool, namespace: str = "ml-training") -> Rendered:
    def program() -> None:
        component = GpuNodePool(pool.name, GpuNodePoolArgs(pool, namespace, "ltx1"))
        pulumi.export("queues", component.queue_names)
        pulumi.export("tolerations", component.tolerations)
        pulumi.export("node_selector", component.node_selector)
        pulumi.export("kubelet_taints", component.kubelet_taints)

    return render_valid(program)


def test_static_pool_labels_each_named_node_and_leaves_taints_to_the_kubelet(
        render_valid: Callable[..., Rendered]) -> None:
    pool = _pool("ltx1", 0)
    rendered = _render(render_valid, pool)
    nodes = rendered.of_kind("Node")
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(pool.nodes or [])
    for node in nodes:
        assert node["metadata"]["labels"][POOL_LABEL] == "a100"
        # NodeSpec.taints is atomic: a patch would own the kubelet's and node controller's taints too.
        assert "spec" not in node
    assert rendered.outputs["kubelet_taints"] == ["nvidia.com/gpu=present:NoSchedule"]
    assert {r.type for r in rendered.resources if r.custom} >= {"kubernetes:core/v1:NodePatch"}
    assert not rendered.of_kind("NodePool")
    assert policy.check(rendered.manifests()) == []


def test_karpenter_pool_is_bounded_by_capacity_and_tainted(render_valid: Callable[..., Rendered]) -> None:
    pool = _pool("lva1", 0)
    rendered = _render(render_valid, pool)
    node_pool = rendered.one("NodePool")
    spec = node_pool["spec"]
    assert spec["limits"] == {"nvidia.com/gpu": "48"}  # 6 nodes x 8 H100s
    assert spec["template"]["spec"]["taints"] == [pool.taint.manifest()]
    assert {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["p5.48xlarge"]} in \
        spec["template"]["spec"]["requirements"]
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert not rendered.of_kind("Node")


def test_kueue_queue_per_team_with_the_pools_quota(render_valid: Callable[..., Rendered]) -> None:
    pool = _pool("ltx1", 0)
    rendered = _render(render_valid, pool)
    flavor = rendered.one("ResourceFlavor")
    assert flavor["spec"]["nodeLabels"] == {POOL_LABEL: "a100"}
    assert flavor["spec"]["tolerations"] == [pool.taint.toleration()]
    queues = {q["metadata"]["name"]: q["spec"] for q in rendered.of_kind("ClusterQueue")}
    assert set(queues) == {"graphfleet-ltx1-a100-feed-ranking", "graphfleet-ltx1-a100-people-search",
                           "graphfleet-ltx1-a100-trust-graph"}
    resources = queues["graphfleet-ltx1-a100-feed-ranking"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {"name": "nvidia.com/gpu", "nominalQuota": 16} in resources
    assert {q["cohort"] for q in queues.values()} == {"graphfleet-ltx1-a100"}
    admitted = {name: q["namespaceSelector"]["matchExpressions"][0]["values"] for name, q in queues.items()}
    assert admitted == {"graphfleet-ltx1-a100-feed-ranking": ["feed-ranking-development",
                                                              "feed-ranking-production", "ml-training"],
                        "graphfleet-ltx1-a100-people-search": ["ml-training"],
                        "graphfleet-ltx1-a100-trust-graph": ["ml-training"]}
    local = {(q["metadata"]["namespace"], q["metadata"]["name"]): q for q in rendered.of_kind("LocalQueue")}
    assert {q["spec"]["clusterQueue"] for q in local.values()} == set(queues)
    assert {ns for ns, _ in local} == {"ml-training", "feed-ranking-development", "feed-ranking-production"}
    assert rendered.one("PriorityClass")["value"] == 1000
    assert rendered.outputs["queues"] == {"feed-ranking": "a100-feed-ranking", "people-search":
                                          "a100-people-search", "trust-graph": "a100-trust-graph"}
    assert rendered.outputs["node_selector"] == {POOL_LABEL: "a100"}


def test_every_object_is_a_child_of_the_component(render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _pool("lva1", 1))
    component = rendered.of_type("graphfleet:gpu:GpuNodePool")[0]
    assert all(r.parent_urn == component.urn for r in rendered.resources if r.custom)


def test_bad_training_namespace_is_refused_before_anything() -> None:
    with pytest.raises(ValueError, match="GpuNodePoolArgs.training_namespace"):
        GpuNodePoolArgs(_pool("ltx1", 0), "ML", "ltx1")


def test_policy_catches_a_flavor_that_forgets_the_taint(render_valid: Callable[..., Rendered]) -> None:
    manifests = _render(render_valid, _pool("ltx1", 1)).manifests()
    for m in manifests:
        if m["kind"] == "ResourceFlavor":
            m["spec"]["tolerations"] = []
    found = [str(v) for v in policy.check(manifests)]
    assert found == ["gpu-tolerations: ResourceFlavor/graphfleet-ltx1-v100: does not tolerate pool 'v100''s "
                     "taint nvidia.com/gpu=v100:NoSchedule"]


def test_cluster_scoped_names_carry_the_platform_and_datacenter(
        render_valid: Callable[..., Rendered]) -> None:
    """ResourceFlavors, ClusterQueues, cohorts and PriorityClasses are shared by every team on the
    cluster: a bare `a100` would join (or take over) another team's Kueue objects."""
    rendered = _render(render_valid, _pool("lva1", 0))
    scoped = [m["metadata"]["name"] for m in rendered.manifests() if "namespace" not in m["metadata"]]
    scoped += [q["spec"]["cohort"] for q in rendered.of_kind("ClusterQueue")]
    assert scoped and all(name.startswith("graphfleet-ltx1-h100") for name in scoped), scoped


def test_policy_refuses_a_node_patch_that_sets_the_atomic_taints_list(
        render_valid: Callable[..., Rendered]) -> None:
    manifests = _render(render_valid, _pool("ltx1", 1)).manifests()
    node = next(m for m in manifests if m["kind"] == "Node")
    node["spec"] = {"taints": [{"key": "nvidia.com/gpu", "value": "v100", "effect": "NoSchedule"}],
                    "podCIDRs": ["10.0.0.0/24"]}
    found = [str(v) for v in policy.check(manifests)]
    # From the OpenAPI (kubernetes-validate's bundled 1.33): taints is atomic, podCIDRs a set (per item).
    assert found == [f"patch-atomic-list: Node/{node['metadata']['name']}: spec.taints is an atomic list: "
                     "a patch would own all of it, fighting the kubelet and node controllers; "
                     "leave it to them"]
