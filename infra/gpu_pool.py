"""`GpuNodePool`: one pool of GPU nodes, its Kueue quotas per team and the training PriorityClass.

Nodes come either from the rack (static: the named nodes get the pool labels through a NodePatch,
and their kubelet registers them with the pool's taint) or from Karpenter (a `karpenter.sh/v1`
NodePool bounded by the pool's GPU capacity, which taints the nodes it launches). Either way the
nodes carry the pool label and the pool's taint, so only pods admitted through the pool's Kueue
queues (whose ResourceFlavor adds the toleration and node selector) land there. Each team gets a
ClusterQueue with its nominal quota, all in one cohort per pool so idle GPUs are lent, and a
LocalQueue in the training namespace that training jobs name with `kueue.x-k8s.io/queue-name`.

Static nodes are never tainted through the API: `NodeSpec.taints` is an atomic list (one owner for
the whole list under server-side apply), and the kubelet and node controllers add their own taints
(`node.kubernetes.io/unreachable`, `.../unschedulable`): patching it would conflict with them, or
with force, wipe them. Node labels are a map, owned key by key. The taint is the kubelet's
`registerWithTaints` (`--register-with-taints`), which the `kubelet_taints` output states per pool.

ResourceFlavors, ClusterQueues, cohorts, PriorityClasses and Karpenter NodePools are cluster-scoped
and shared with every other team on the cluster: their names carry `graphfleet-<datacenter>-`.

Manifests are built by plain functions; the component only registers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import names
from infra.config import GPU_MODEL_LABEL, GPU_RESOURCE, KUBELET_TAINTS, POOL_LABEL, GpuPool, TeamQuota

TYPE_TOKEN = "graphfleet:gpu:GpuNodePool"
KUEUE_API = "kueue.x-k8s.io/v1beta1"
KARPENTER_API = "karpenter.sh/v1"
EC2_NODE_CLASS = {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass"}
# Karpenter replaces nodes this old, so drivers and AMIs do not drift for months.
NODE_EXPIRY = "720h"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass(frozen=True)
class GpuNodePoolArgs:
    pool: GpuPool
    training_namespace: str
    datacenter: str   # prefixes every cluster-scoped name

    def __post_init__(self) -> None:
        names.check_label(self.training_namespace, "GpuNodePoolArgs.training_namespace")
        names.check_label(self.datacenter, "GpuNodePoolArgs.datacenter")


def _labels(pool: GpuPool) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "graphfleet", "app.kubernetes.io/part-of": "graphfleet",
            POOL_LABEL: pool.name}


def node_labels(pool: GpuPool) -> dict[str, str]:
    return {POOL_LABEL: pool.name, GPU_MODEL_LABEL: pool.gpu_model}


def node_selector(pool: GpuPool) -> dict[str, str]:
    """What a training pod selects to run on this pool."""
    return {POOL_LABEL: pool.name}


def cluster_name(datacenter: str, *parts: str) -> str:
    """A cluster-scoped name: `graphfleet-<datacenter>-<parts>`, so it cannot join another team's."""
    return names.object_name("-".join(("graphfleet", datacenter, *parts)))


def flavor_name(pool: GpuPool, datacenter: str) -> str:
    return cluster_name(datacenter, pool.name)


def cohort_name(pool: GpuPool, datacenter: str) -> str:
    return cluster_name(datacenter, pool.name)


def cluster_queue_name(pool: GpuPool, team: TeamQuota, datacenter: str) -> str:
    return cluster_name(datacenter, pool.name, team.name)


def queue_name(pool: GpuPool, team: TeamQuota) -> str:
    """Name of the team's LocalQueue (namespaced: what training jobs name)."""
    return names.object_name(f"{pool.name}-{team.name}")


def priority_class_name(pool: GpuPool, datacenter: str) -> str:
    return cluster_name(datacenter, pool.name, "training")


def kubelet_taints(pool: GpuPool) -> list[str]:
    """static pools: the kubelet's `--register-with-taints` value for each of the pool's nodes."""
    taint = pool.taint
    return [f"{taint.key}={taint.value}:{taint.effect}"]


def node_patch_manifests(pool: GpuPool) -> list[dict[str, Any]]:
    """static pools: the labels each named node must carry (labels only: see the module docstring),
    and an annotation saying which taints its kubelet must register, for people and policy checks."""
    return [{
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": node_labels(pool),
                     "annotations": {KUBELET_TAINTS: ",".join(kubelet_taints(pool))}},
    } for node in pool.nodes or []]


def karpenter_node_pool_manifest(pool: GpuPool, datacenter: str) -> dict[str, Any]:
    """karpenter pools: allowed instance types, tainted, never more GPUs than the pool's capacity."""
    karpenter = pool.karpenter
    if karpenter is None:
        raise ValueError(f"GPU pool {pool.name!r} is kind {pool.kind}, not karpenter")
    return {
        "apiVersion": KARPENTER_API, "kind": "NodePool",
        "metadata": {"name": cluster_name(datacenter, pool.name), "labels": _labels(pool)},
        "spec": {
            "template": {
                "metadata": {"labels": node_labels(pool)},
                "spec": {
                    "nodeClassRef": {**EC2_NODE_CLASS, "name": karpenter.node_class},
                    "taints": [pool.taint.manifest()],
                    "requirements": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In",
                         "values": list(karpenter.instance_types)},
                        {"key": "karpenter.sh/capacity-type", "operator": "In",
                         "values": list(karpenter.capacity_types)},
                    ],
                    "expireAfter": NODE_EXPIRY,
                },
            },
            "limits": {GPU_RESOURCE: str(pool.gpu_capacity)},
            # Only empty nodes are removed: a running training job is never consolidated away.
            "disruption": {"consolidationPolicy": "WhenEmpty",
                           "consolidateAfter": karpenter.consolidate_after},
        },
    }


def resource_flavor_manifest(pool: GpuPool, datacenter: str) -> dict[str, Any]:
    """Kueue injects these node labels and tolerations into every workload it admits on the pool."""
    return {
        "apiVersion": KUEUE_API, "kind": "ResourceFlavor",
        "metadata": {"name": flavor_name(pool, datacenter), "labels": _labels(pool)},
        "spec": {"nodeLabels": node_selector(pool), "tolerations": [pool.taint.toleration()]},
    }


def cluster_queue_manifest(pool: GpuPool, team: TeamQuota, training_namespace: str,
                           datacenter: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue",
        "metadata": {"name": cluster_queue_name(pool, team, datacenter),
                     "labels": {**_labels(pool), "graphfleet.io/team": team.name}},
        "spec": {
            # One cohort per pool: a team's idle quota is lent to the others and reclaimed on demand.
            "cohort": cohort_name(pool, datacenter),
            # Flyte runs task pods in `<project>-<domain>` namespaces: the team's, and the training one.
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In",
                "values": team_namespaces(team, training_namespace)}]},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                "flavors": [{"name": flavor_name(pool, datacenter), "resources": [
                    {"name": "cpu", "nominalQuota": team.cpu},
                    {"name": "memory", "nominalQuota": team.memory},
                    {"name": GPU_RESOURCE, "nominalQuota": team.gpus},
                ]}],
            }],
            "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
        },
    }


def team_namespaces(team: TeamQuota, training_namespace: str) -> list[str]:
    """Where the team's training pods may run: the training namespace and its Flyte namespaces."""
    return sorted({training_namespace, *team.namespaces})


def local_queue_manifest(pool: GpuPool, team: TeamQuota, namespace: str,
                         datacenter: str) -> dict[str, Any]:
    """The team's queue in one namespace; the same name everywhere, so a task names it once."""
    return {
        "apiVersion": KUEUE_API, "kind": "LocalQueue",
        "metadata": {"name": queue_name(pool, team), "namespace": namespace,
                     "labels": {**_labels(pool), "graphfleet.io/team": team.name}},
        "spec": {"clusterQueue": cluster_queue_name(pool, team, datacenter)},
    }


def priority_class_manifest(pool: GpuPool, datacenter: str) -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": priority_class_name(pool, datacenter), "labels": _labels(pool)},
        "value": pool.priority,
        # Not the default class: `globalDefault` is left out, not `false` (docs/external-contracts.md:
        # an omitempty false is not stored, so a second field manager applying it would conflict).
        "preemptionPolicy": "PreemptLowerPriority",
        "description": f"GNN training on GPU pool {pool.name} ({pool.gpu_model})",
    }


def pool_manifests(args: GpuNodePoolArgs) -> list[dict[str, Any]]:
    """Every object of the pool, in the order they are declared."""
    pool, namespace, dc = args.pool, args.training_namespace, args.datacenter
    nodes = node_patch_manifests(pool) if pool.kind == "static" else [karpenter_node_pool_manifest(pool, dc)]
    queues = [m for team in pool.teams for m in (
        cluster_queue_manifest(pool, team, namespace, dc),
        *(local_queue_manifest(pool, team, ns, dc) for ns in team_namespaces(team, namespace)))]
    return [*nodes, resource_flavor_manifest(pool, dc), *queues, priority_class_manifest(pool, dc)]


def _declare(name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.Resource:
    kind = manifest["kind"]
    if kind == "Node":
        return k8s.core.v1.NodePatch(name, metadata=manifest["metadata"], opts=opts)
    if kind == "PriorityClass":
        return k8s.scheduling.v1.PriorityClass(
            name, metadata=manifest["metadata"], value=manifest["value"],
            preemption_policy=manifest["preemptionPolicy"],
            description=manifest["description"], opts=opts)
    return k8s.apiextensions.CustomResource(name, api_version=manifest["apiVersion"], kind=kind,
                                            metadata=manifest["metadata"], spec=manifest["spec"], opts=opts)


class GpuNodePool(pulumi.ComponentResource):
    """Outputs: `queue_names` (the LocalQueues, by team), `node_selector`, `tolerations`,
    `priority_class_name` — what a training pod on the pool needs — and `kubelet_taints` (static
    pools: the `--register-with-taints` its nodes' kubelets need; empty for Karpenter pools)."""

    queue_names: pulumi.Output[dict[str, str]]
    node_selector: pulumi.Output[dict[str, str]]
    tolerations: pulumi.Output[list[dict[str, str]]]
    priority_class_name: pulumi.Output[str]
    kubelet_taints: pulumi.Output[list[str]]

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        declared: dict[tuple[str, str], pulumi.Resource] = {}
        for manifest in pool_manifests(args):
            kind, object_name = manifest["kind"], manifest["metadata"]["name"]
            if kind == "LocalQueue" and manifest["metadata"]["namespace"] != args.training_namespace:
                # One per team namespace: the same name in each (how training tasks name it).
                object_name = f"{manifest['metadata']['namespace']}-{object_name}"
            # A ClusterQueue needs its flavor first; a LocalQueue its ClusterQueue.
            needs = {"ClusterQueue": ("ResourceFlavor", flavor_name(args.pool, args.datacenter)),
                     "LocalQueue": ("ClusterQueue", manifest.get("spec", {}).get("clusterQueue"))}.get(kind)
            after = [declared[needs]] if needs else []
            declared[(kind, object_name)] = _declare(
                f"{name}-{kind.lower()}-{object_name}", manifest,
                pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=after)))
        pool = args.pool
        self.queue_names = pulumi.Output.from_input({t.name: queue_name(pool, t) for t in pool.teams})
        self.node_selector = pulumi.Output.from_input(node_selector(pool))
        self.tolerations = pulumi.Output.from_input([pool.taint.toleration()])
        self.priority_class_name = pulumi.Output.from_input(priority_class_name(pool, args.datacenter))
        self.kubelet_taints = pulumi.Output.from_input(kubelet_taints(pool) if pool.kind == "static" else [])
        self.register_outputs({
            "queue_names": self.queue_names,
            "node_selector": self.node_selector,
            "tolerations": self.tolerations,
            "priority_class_name": self.priority_class_name,
            "kubelet_taints": self.kubelet_taints,
        })
