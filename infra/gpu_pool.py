"""`GpuNodePool`: one pool of GPU nodes, its Kueue quotas per team and the training PriorityClass.

Nodes come either from the rack (static: label and taint the named nodes with NodePatch) or from
Karpenter (a `karpenter.sh/v1` NodePool bounded by the pool's GPU capacity). Either way the nodes
carry the pool label and the pool's taint, so only pods admitted through the pool's Kueue queues
(whose ResourceFlavor adds the toleration and node selector) land there. Each team gets a
ClusterQueue with its nominal quota, all in one cohort per pool so idle GPUs are lent, and a
LocalQueue in the training namespace that training jobs name with `kueue.x-k8s.io/queue-name`.

Manifests are built by plain functions; the component only registers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import names
from infra.config import GPU_MODEL_LABEL, GPU_RESOURCE, POOL_LABEL, GpuPool, TeamQuota

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

    def __post_init__(self) -> None:
        names.check_label(self.training_namespace, "GpuNodePoolArgs.training_namespace")


def _labels(pool: GpuPool) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "graphfleet", "app.kubernetes.io/part-of": "graphfleet",
            POOL_LABEL: pool.name}


def node_labels(pool: GpuPool) -> dict[str, str]:
    return {POOL_LABEL: pool.name, GPU_MODEL_LABEL: pool.gpu_model}


def node_selector(pool: GpuPool) -> dict[str, str]:
    """What a training pod selects to run on this pool."""
    return {POOL_LABEL: pool.name}


def flavor_name(pool: GpuPool) -> str:
    return names.object_name(f"gpu-{pool.name}")


def queue_name(pool: GpuPool, team: TeamQuota) -> str:
    """Name of the team's ClusterQueue and of its LocalQueue."""
    return names.object_name(f"{pool.name}-{team.name}")


def priority_class_name(pool: GpuPool) -> str:
    return names.object_name(f"graphfleet-{pool.name}-training")


def node_patch_manifests(pool: GpuPool) -> list[dict[str, Any]]:
    """static pools: the label and taint each named node must carry."""
    return [{
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": node_labels(pool)},
        "spec": {"taints": [pool.taint.manifest()]},
    } for node in pool.nodes or []]


def karpenter_node_pool_manifest(pool: GpuPool) -> dict[str, Any]:
    """karpenter pools: allowed instance types, tainted, never more GPUs than the pool's capacity."""
    karpenter = pool.karpenter
    if karpenter is None:
        raise ValueError(f"GPU pool {pool.name!r} is kind {pool.kind}, not karpenter")
    return {
        "apiVersion": KARPENTER_API, "kind": "NodePool",
        "metadata": {"name": names.object_name(f"graphfleet-{pool.name}"), "labels": _labels(pool)},
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


def resource_flavor_manifest(pool: GpuPool) -> dict[str, Any]:
    """Kueue injects these node labels and tolerations into every workload it admits on the pool."""
    return {
        "apiVersion": KUEUE_API, "kind": "ResourceFlavor",
        "metadata": {"name": flavor_name(pool), "labels": _labels(pool)},
        "spec": {"nodeLabels": node_selector(pool), "tolerations": [pool.taint.toleration()]},
    }


def cluster_queue_manifest(pool: GpuPool, team: TeamQuota, training_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue",
        "metadata": {"name": queue_name(pool, team),
                     "labels": {**_labels(pool), "graphfleet.io/team": team.name}},
        "spec": {
            # One cohort per pool: a team's idle quota is lent to the others and reclaimed on demand.
            "cohort": pool.name,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": training_namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                "flavors": [{"name": flavor_name(pool), "resources": [
                    {"name": "cpu", "nominalQuota": team.cpu},
                    {"name": "memory", "nominalQuota": team.memory},
                    {"name": GPU_RESOURCE, "nominalQuota": team.gpus},
                ]}],
            }],
            "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
        },
    }


def local_queue_manifest(pool: GpuPool, team: TeamQuota, training_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE_API, "kind": "LocalQueue",
        "metadata": {"name": queue_name(pool, team), "namespace": training_namespace,
                     "labels": {**_labels(pool), "graphfleet.io/team": team.name}},
        "spec": {"clusterQueue": queue_name(pool, team)},
    }


def priority_class_manifest(pool: GpuPool) -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": priority_class_name(pool), "labels": _labels(pool)},
        "value": pool.priority,
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority",
        "description": f"GNN training on GPU pool {pool.name} ({pool.gpu_model})",
    }


def pool_manifests(args: GpuNodePoolArgs) -> list[dict[str, Any]]:
    """Every object of the pool, in the order they are declared."""
    pool, namespace = args.pool, args.training_namespace
    nodes = node_patch_manifests(pool) if pool.kind == "static" else [karpenter_node_pool_manifest(pool)]
    queues = [m for team in pool.teams for m in (cluster_queue_manifest(pool, team, namespace),
                                                 local_queue_manifest(pool, team, namespace))]
    return [*nodes, resource_flavor_manifest(pool), *queues, priority_class_manifest(pool)]


def training_placement(pool: GpuPool) -> dict[str, Any]:
    """The scheduling fields a training pod on this pool needs (Kueue adds them on admission too)."""
    return {"nodeSelector": node_selector(pool), "tolerations": [pool.taint.toleration()],
            "priorityClassName": priority_class_name(pool)}


def _declare(name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.Resource:
    kind = manifest["kind"]
    if kind == "Node":
        return k8s.core.v1.NodePatch(name, metadata=manifest["metadata"], spec=manifest["spec"], opts=opts)
    if kind == "PriorityClass":
        return k8s.scheduling.v1.PriorityClass(
            name, metadata=manifest["metadata"], value=manifest["value"],
            global_default=manifest["globalDefault"], preemption_policy=manifest["preemptionPolicy"],
            description=manifest["description"], opts=opts)
    return k8s.apiextensions.CustomResource(name, api_version=manifest["apiVersion"], kind=kind,
                                            metadata=manifest["metadata"], spec=manifest["spec"], opts=opts)


class GpuNodePool(pulumi.ComponentResource):
    """Outputs: `queue_names` (the LocalQueues, by team), `node_selector`, `tolerations`,
    `priority_class_name` — what a training pod on the pool needs."""

    queue_names: pulumi.Output[dict[str, str]]
    node_selector: pulumi.Output[dict[str, str]]
    tolerations: pulumi.Output[list[dict[str, str]]]
    priority_class_name: pulumi.Output[str]

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        declared: dict[tuple[str, str], pulumi.Resource] = {}
        for manifest in pool_manifests(args):
            kind, object_name = manifest["kind"], manifest["metadata"]["name"]
            # A ClusterQueue needs its flavor first; a LocalQueue its ClusterQueue.
            needs = {"ClusterQueue": ("ResourceFlavor", flavor_name(args.pool)),
                     "LocalQueue": ("ClusterQueue", object_name)}.get(kind)
            after = [declared[needs]] if needs else []
            declared[(kind, object_name)] = _declare(
                f"{name}-{kind.lower()}-{object_name}", manifest,
                pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=after)))
        pool = args.pool
        self.queue_names = pulumi.Output.from_input({t.name: queue_name(pool, t) for t in pool.teams})
        self.node_selector = pulumi.Output.from_input(node_selector(pool))
        self.tolerations = pulumi.Output.from_input([pool.taint.toleration()])
        self.priority_class_name = pulumi.Output.from_input(priority_class_name(pool))
        self.register_outputs({
            "queue_names": self.queue_names,
            "node_selector": self.node_selector,
            "tolerations": self.tolerations,
            "priority_class_name": self.priority_class_name,
        })
