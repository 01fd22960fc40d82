"""Adopting the pending creates of an interrupted `up` into the stack's state, so a destroy deletes them.

A CLI killed mid-`up` leaves its unfinished creates as pending operations, and their objects may
exist in the cluster. `destroy` deletes only the state's resources and carries pending creates over
untouched (pulumi pkg/backend/journal.go, v3.274.0), and `refresh --clear-pending-creates` drops them
from the state while the objects stay: either way the StatefulSet would outlive its stack. So before a
destroy, each pending create of a Kubernetes object becomes a resource of the state with the id
pulumi-kubernetes gives it (`namespace/name`, provider/pkg/provider/util.go `fqName`), which is what
the CLI's own "import: the CREATE succeeded" resolution does (pkg/cmd/pulumi/operations/refresh.go
`interactiveFixPendingCreate`, `--import-pending-creates`). The destroy then deletes the object, or
finds it gone (pulumi-kubernetes `await.Deletion` treats NotFound as deleted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_CREATING = "creating"


def adopt(deployment: Mapping[str, Any], default_namespace: str) -> dict[str, Any] | None:
    """The deployment (`stack export`'s `deployment`) with its Kubernetes pending creates moved into
    its resources; None if it has none (nothing to import). Pending creates of anything else, and of
    an object already in the state, are dropped: they have nothing a destroy could delete."""
    pending = deployment.get("pending_operations") or []
    creates = [op for op in pending if op.get("type") == _CREATING]
    if not creates:
        return None
    resources = list(deployment.get("resources") or [])
    known = {resource.get("urn") for resource in resources}
    for op in creates:
        resource = op.get("resource") or {}
        adopted = _as_resource(resource, default_namespace)
        if adopted is not None and resource.get("urn") not in known:
            resources.append(adopted)
            known.add(resource.get("urn"))
    return {**deployment, "resources": resources,
            "pending_operations": [op for op in pending if op.get("type") != _CREATING]}


def _as_resource(resource: dict[str, Any], default_namespace: str) -> dict[str, Any] | None:
    """A pending create's resource as a created one; None unless it is a named Kubernetes object."""
    inputs = resource.get("inputs") or {}
    metadata = inputs.get("metadata") or {}
    name = metadata.get("name")
    if not (resource.get("custom") and str(resource.get("type", "")).startswith("kubernetes:")
            and isinstance(name, str) and name):
        return None
    # Namespaced objects get the provider's namespace when they name none (the fleet's provider sets
    # `namespace`); the id is what pulumi-kubernetes' Delete parses back (`parseFqName`).
    namespace = metadata.get("namespace") or default_namespace
    object_id = f"{namespace}/{name}" if namespace else name
    live = {**inputs, "metadata": {**metadata, "name": name, "namespace": namespace}}
    # pulumi-kubernetes checkpoints the live object with its inputs under `__inputs`
    # (provider.go `checkpointObject` / `parseCheckpointObject`).
    return {**resource, "id": object_id, "outputs": {**live, "__inputs": inputs}}
