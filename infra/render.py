"""Run a Pulumi program under mocks and return what it declared: resources, manifests, stack outputs.

No engine or cluster is involved: `pulumi.runtime.set_mocks` replaces the resource monitor, and the
mocks echo each resource's inputs back as its outputs (with a realistic id), so `apply` chains and
stack outputs resolve to the values a real `pulumi up` would compute from the inputs.

Each run happens in its own copy of the caller's `contextvars` context with a fresh event loop:
Pulumi keeps its runtime state (settings, root stack, config) in context variables, so runs in one
process do not see each other. Runs must happen on the main thread: mock-based runs hang in threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func

# Kinds whose objects are not namespaced: their Pulumi id is the bare name.
_CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
    "StorageClass", "CustomResourceDefinition", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "ClusterQueue", "ResourceFlavor", "WorkloadPriorityClass", "NodePool",
    "EC2NodeClass",
    "RuntimeClass", "IngressClass", "CSIDriver", "APIService",
})


@dataclass(frozen=True)
class RenderedResource:
    """One resource the program registered, with its inputs as the provider would receive them."""

    type: str                 # e.g. "kubernetes:apps/v1:StatefulSet" or "graphfleet:graph:GraphDataService"
    name: str                 # the Pulumi logical name
    urn: str
    parent_urn: str | None    # None for resources parented to the stack
    custom: bool              # False for component resources
    inputs: dict[str, Any]    # for Kubernetes objects: the wire-form manifest
    provider: str | None = None  # `urn::id` of an explicit provider; None: the default provider

    @property
    def is_kubernetes_object(self) -> bool:
        return (self.type.startswith("kubernetes:") and isinstance(self.inputs.get("apiVersion"), str)
                and isinstance(self.inputs.get("kind"), str))


@dataclass(frozen=True)
class Rendered:
    """Everything one program run declared."""

    resources: list[RenderedResource]   # sorted by URN
    outputs: dict[str, Any] = field(default_factory=dict)

    def manifests(self) -> list[dict[str, Any]]:
        """The Kubernetes objects, in URN order, as plain manifests."""
        return [r.inputs for r in self.resources if r.is_kubernetes_object]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests() if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        """The single manifest of `kind`; raises if there are none or several."""
        found = self.of_kind(kind)
        if len(found) != 1:
            raise LookupError(f"expected exactly one {kind}, rendered {len(found)}")
        return found[0]

    def children_of(self, urn: str) -> list[RenderedResource]:
        return [r for r in self.resources if r.parent_urn == urn]

    def of_type(self, type_: str) -> list[RenderedResource]:
        return [r for r in self.resources if r.type == type_]


def render(program: Callable[[], None], stack: str = "dev", project: str = "graphfleet",
           config: Mapping[str, str] | None = None) -> Rendered:
    """Run `program` (which declares resources and may `pulumi.export`) under mocks.

    `config` keys may be `"key"` (taken as `"<project>:key"`) or fully qualified `"ns:key"`.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("render() must run on the main thread: Pulumi mock runs hang in other threads")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("render() cannot run inside a running event loop; call it from synchronous code")
    qualified = {(k if ":" in k else f"{project}:{k}"): v for k, v in (config or {}).items()}
    return contextvars.copy_context().run(_render_isolated, program, stack, project, qualified)


def _render_isolated(program: Callable[[], None], stack: str, project: str,
                     config: dict[str, str]) -> Rendered:
    previous_loop = _current_loop()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        pulumi_settings.reset_options(project=project, stack=stack)
        set_all_config(config)
        monitor = _RecordingMonitor(_EchoMocks())
        pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack, preview=False, monitor=monitor)

        async def run() -> dict[str, Any]:
            await run_pulumi_func(program)
            return await _resolve_stack_outputs()

        outputs = loop.run_until_complete(run())
        # Registrations race on the event loop; sorting makes two renders of one program equal.
        return Rendered(resources=sorted(monitor.recorded, key=lambda r: r.urn), outputs=outputs)
    finally:
        loop.close()
        asyncio.set_event_loop(previous_loop)


def _current_loop() -> asyncio.AbstractEventLoop | None:
    policy = asyncio.get_event_loop_policy()
    local = getattr(policy, "_local", None)
    loop = getattr(local, "_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_closed() else None


async def _resolve_stack_outputs() -> dict[str, Any]:
    root = pulumi_settings.get_root_resource()
    exported: dict[str, Any] = getattr(root, "outputs", {}) or {}
    resolved = {}
    for key, value in exported.items():
        resolved[key] = ints_back(await pulumi.Output.from_input(value).future())
    return resolved


def ints_back(value: Any) -> Any:
    """Undo the wire's float-for-every-number: 2.0 -> 2, recursively.

    Kubernetes manifests carry no real floats (quantities are strings), so an integral float is
    always an int that went through protobuf's Struct.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: ints_back(v) for k, v in value.items()}
    if isinstance(value, list):
        return [ints_back(v) for v in value]
    return value


def mock_id(type_: str, name: str, inputs: Mapping[str, Any]) -> str:
    """The id the real provider would assign: `namespace/name` for namespaced Kubernetes objects."""
    metadata = inputs.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    kube_name = metadata.get("name")
    if type_.startswith("kubernetes:") and isinstance(kube_name, str):
        namespace = metadata.get("namespace")
        if inputs.get("kind") in _CLUSTER_SCOPED_KINDS or not namespace:
            return kube_name
        return f"{namespace}/{kube_name}"
    return f"{name}-id"


class _EchoMocks(pulumi_mocks.Mocks):
    """Outputs = inputs (what most providers return for declarative objects); invokes echo args."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = ints_back(args.inputs)
        return mock_id(args.typ, args.name, inputs), inputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return dict(args.args), None


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The stock mock monitor, also recording each registration's parent (MockResourceArgs lacks it)."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.recorded: list[RenderedResource] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            parent = request.parent or None
            if parent is not None and parent.split("::")[-2].endswith("pulumi:pulumi:Stack"):
                parent = None
            # Secrets are unwrapped: a manifest is what the provider sends to the API server.
            raw, _ = rpc.deserialize_properties_unwrap_secrets(request.object)
            self.recorded.append(RenderedResource(
                type=request.type, name=request.name, urn=response.urn, parent_urn=parent,
                custom=bool(request.custom), inputs=ints_back(raw), provider=request.provider or None))
        return response
