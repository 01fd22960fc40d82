"""The fleet's Pulumi program: one GraphDataService on an explicitly configured Kubernetes provider.

What the inline program of every fleet stack runs (flyte_agent/pulumi_provisioner.py drives the
stacks); the component itself is infra/graph_service.py.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import pulumi
import pulumi_kubernetes as k8s

from flyte_agent.provisioner import Provision
from flyte_agent.settings import Settings
from infra.config import AMBIENT_KUBECONFIG
from infra.graph_service import GraphDataService, GraphDataServiceArgs, Placement


def warm_import_kubernetes() -> None:
    """Import every pulumi_kubernetes package now: concurrent inline programs race on its lazy imports.

    Packages only: each imports its own modules (`from .CustomResource import *`), and importing a
    module by name again would rebind the package attribute of the same name (the class
    `apiextensions.CustomResource`) to the module."""
    for module in pkgutil.walk_packages(k8s.__path__, prefix="pulumi_kubernetes."):
        if module.ispkg:
            importlib.import_module(module.name)


def fleet_args(provision: Provision, settings: Settings) -> GraphDataServiceArgs:
    """The component's arguments; constructing them validates the provision (raises ValueError)."""
    return GraphDataServiceArgs(name=provision.name, namespace=settings.namespace, spec=provision.spec,
                                image=settings.image,
                                placement=Placement.of(settings.node_selector, settings.tolerations),
                                env=settings.engine_env, object_store=settings.object_store,
                                client_namespaces=tuple(settings.client_namespaces),
                                service_account=settings.engine_service_account)


# docs/design.md, "What the datacenter stack owns": fleet stacks adopt, the datacenter stack does not.
FLEET_UPSERT_EXISTING_OBJECTS = True
# An adopting `up` applies under a field manager of its own; force takes over the dead `up`'s fields.
FLEET_PATCH_FORCE = True


def fleet_program(provision: Provision, settings: Settings,
                  guard: Callable[[], None] = lambda: None) -> Callable[[], None]:
    """The inline program: one GraphDataService on an explicitly configured Kubernetes provider.
    `guard` runs first, while the `up` holds the stack's lock, and raises to create nothing."""
    args = fleet_args(provision, settings)

    def program() -> None:
        guard()
        # Upsert (pulumi-kubernetes PR 4278's opt-in) so a retried `up` after an interrupted one adopts
        # what it created (pending creates, no resources of the state), with force so its own field
        # manager takes the dead `up`'s fields. Safe: the stack alone owns these names and never renames.
        provider = k8s.Provider("k8s", namespace=settings.namespace,
                                kubeconfig=settings.kubeconfig or AMBIENT_KUBECONFIG,
                                upsert_existing_objects=FLEET_UPSERT_EXISTING_OBJECTS,
                                enable_patch_force=FLEET_PATCH_FORCE)
        service = GraphDataService(provision.name, args, opts=pulumi.ResourceOptions(providers=[provider]))
        pulumi.export("endpoints", service.endpoints)
        pulumi.export("endpoints_env", service.endpoints_env)
        pulumi.export("service_name", service.service_name)
        pulumi.export("namespace", service.namespace)

    return program
