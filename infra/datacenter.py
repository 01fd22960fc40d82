"""`Datacenter`: everything one datacenter runs, composed from its `StackConfig`.

Namespaces (Pod Security `restricted` enforced), the GPU pools with their Kueue queues, every
long-lived shared graph service, and the Flyte connector (told the shared services' endpoints so
tasks can `reuse` them). Every component's arguments are built and checked before the first
resource is declared, so a bad stack declares nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi.runtime.config import CONFIG, get_config_env

from infra.config import AMBIENT_KUBECONFIG, StackConfig, stack_config_from_mapping
from infra.connector_deployment import FlyteConnector, FlyteConnectorArgs
from infra.gpu_pool import GpuNodePool, GpuNodePoolArgs
from infra.graph_service import (
    ENGINE_SERVICE_ACCOUNT,
    FleetNames,
    GraphDataService,
    GraphDataServiceArgs,
    Placement,
    endpoints,
    engine_service_account_manifest,
)

TYPE_TOKEN = "graphfleet:datacenter:Datacenter"
POD_SECURITY = "restricted"


def namespace_manifest(name: str, datacenter: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": POD_SECURITY,
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": POD_SECURITY,
            "app.kubernetes.io/part-of": "graphfleet",
            "app.kubernetes.io/managed-by": "graphfleet",
            "graphfleet.io/datacenter": datacenter,
        }},
    }


@dataclass(frozen=True)
class DatacenterPlan:
    """Every component's arguments, checked; nothing declared yet."""

    namespaces: list[str]
    pools: list[GpuNodePoolArgs]
    shared: list[GraphDataServiceArgs]
    connector: FlyteConnectorArgs


def plan(config: StackConfig) -> DatacenterPlan:
    ns = config.namespaces
    placement = config.graph_service_placement
    shared = [GraphDataServiceArgs(name=s.name, namespace=ns.shared_services, spec=s.spec,
                                   image=config.graph_engine_image,
                                   placement=Placement.of(placement.node_selector, placement.tolerations),
                                   env=config.graph_engine_env, object_store=config.object_store,
                                   service_account=ENGINE_SERVICE_ACCOUNT, long_lived=True,
                                   client_namespaces=tuple(config.client_namespaces()))
              for s in config.shared_services]
    # Deterministic names: the connector is told them up front and never waits for a graph to load.
    shared_endpoints = {a.name: endpoints(FleetNames.of(a), a.spec.replicas, a.spec.port) for a in shared}
    return DatacenterPlan(
        namespaces=config.stack_namespaces(),
        pools=[GpuNodePoolArgs(pool=p, training_namespace=ns.training, datacenter=config.datacenter.name)
               for p in config.gpu_pools],
        shared=shared,
        connector=FlyteConnectorArgs(config=config.connector, namespace=ns.connector,
                                     data_namespace=ns.data_services,
                                     default_image=config.graph_engine_image,
                                     shared_services=shared_endpoints,
                                     # Ephemeral fleets land where the shared ones do, with their env.
                                     placement=placement, engine_env=config.graph_engine_env,
                                     object_store=config.object_store,
                                     client_namespaces=tuple(config.client_namespaces())))


class Datacenter(pulumi.ComponentResource):
    """Outputs: `connector_endpoint`, `flyte_helm_values`, `namespaces`, `queues` (pool -> team ->
    LocalQueue), `shared_services` (name -> endpoints), `kubelet_taints` (static pool -> the
    `--register-with-taints` its nodes' kubelets need)."""

    connector_endpoint: pulumi.Output[str]
    flyte_helm_values: pulumi.Output[dict[str, str]]
    namespaces: pulumi.Output[list[str]]
    queues: pulumi.Output[dict[str, dict[str, str]]]
    shared_services: pulumi.Output[dict[str, list[str]]]
    kubelet_taints: pulumi.Output[dict[str, list[str]]]

    def __init__(self, name: str, config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        checked = plan(config)
        super().__init__(TYPE_TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        declared: dict[str, k8s.core.v1.NamespacePatch] = {}
        for namespace in checked.namespaces:
            manifest = namespace_manifest(namespace, config.datacenter.name)
            # The namespaces exist before the stack (they hold the operator's Secrets): the stack
            # owns only its labels, through a patch; a create would fail with AlreadyExists.
            declared[namespace] = k8s.core.v1.NamespacePatch(f"{name}-ns-{namespace}",
                                                             metadata=manifest["metadata"], opts=child)

        def inside(namespace: str) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[declared[namespace]])

        # The servers' account in both fleet namespaces (workload identity for the object store).
        accounts = {}
        for namespace in (config.namespaces.data_services, config.namespaces.shared_services):
            account = engine_service_account_manifest(namespace, config.object_store)
            accounts[namespace] = k8s.core.v1.ServiceAccount(
                f"{name}-engine-sa-{namespace}", metadata=account["metadata"],
                automount_service_account_token=account["automountServiceAccountToken"],
                opts=inside(namespace))

        pools = {args.pool.name: GpuNodePool(f"{name}-gpu-{args.pool.name}", args,
                                             inside(args.training_namespace))
                 for args in checked.pools}
        for args in checked.shared:
            GraphDataService(f"{name}-shared-{args.name}", args, pulumi.ResourceOptions(
                parent=self, depends_on=[declared[args.namespace], accounts[args.namespace]]))
        connector_args = checked.connector
        needs = [declared[connector_args.namespace], declared[connector_args.data_namespace]]
        connector = FlyteConnector(f"{name}-connector", connector_args,
                                   pulumi.ResourceOptions(parent=self, depends_on=needs))

        self.connector_endpoint = connector.endpoint
        self.flyte_helm_values = connector.flyte_helm_values
        self.namespaces = pulumi.Output.from_input(checked.namespaces)
        self.queues = pulumi.Output.all(**{n: p.queue_names for n, p in pools.items()}) if pools else \
            pulumi.Output.from_input({})
        self.shared_services = pulumi.Output.from_input(dict(connector_args.shared_services))
        static = {args.pool.name: pools[args.pool.name].kubelet_taints
                  for args in checked.pools if args.pool.kind == "static"}
        self.kubelet_taints = pulumi.Output.all(**static) if static else pulumi.Output.from_input({})
        self.register_outputs({
            "connector_endpoint": self.connector_endpoint,
            "flyte_helm_values": self.flyte_helm_values,
            "namespaces": self.namespaces,
            "queues": self.queues,
            "shared_services": self.shared_services,
            "kubelet_taints": self.kubelet_taints,
        })


def provider(config: StackConfig) -> k8s.Provider:
    """The datacenter's explicit provider: its cluster by name (`kubernetes:context`), creates that fail
    on existing objects (pulumi-kubernetes PR 4278's default, stated: this stack owns what it creates).
    `kubeconfig=""`: the provider then reads $KUBECONFIG itself; left None, the SDK records $KUBECONFIG's
    path as an input, and the same stack run from another path shows a provider update."""
    return k8s.Provider(f"{config.datacenter.name}-k8s", context=config.kubernetes_context,
                        kubeconfig=AMBIENT_KUBECONFIG, upsert_existing_objects=False)


def program(config: StackConfig) -> Datacenter:
    """The stack's program: one Datacenter on its explicit provider, outputs exported as stack outputs."""
    datacenter = Datacenter(config.datacenter.name, config,
                            pulumi.ResourceOptions(providers=[provider(config)]))
    pulumi.export("connector_endpoint", datacenter.connector_endpoint)
    pulumi.export("flyte_helm_values", datacenter.flyte_helm_values)
    pulumi.export("namespaces", datacenter.namespaces)
    pulumi.export("queues", datacenter.queues)
    pulumi.export("shared_services", datacenter.shared_services)
    pulumi.export("kubelet_taints", datacenter.kubelet_taints)
    return datacenter


def config_from_pulumi() -> StackConfig:
    """The running stack's config as the engine hands it to the program, validated."""
    stack = pulumi.get_stack()
    values = {**get_config_env(), **CONFIG.get()}
    return stack_config_from_mapping(values, f"stacks/Pulumi.{stack}.yaml", expected_name=stack)
