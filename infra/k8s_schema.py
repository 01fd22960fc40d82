"""Validate rendered manifests against the Kubernetes OpenAPI schema, offline.

Built-in kinds are checked with the strict schemas bundled in `kubernetes-validate` for one pinned
Kubernetes version (unknown fields are errors, as `kubectl apply --validate=strict` would make them).
The custom resources the project renders (Kueue, Karpenter) are not in that schema: they are checked
against the small schemas below, written from the CRDs of the pinned releases and reusing the
Kubernetes definitions for the core types they embed. A kind with no schema at all is reported as
an error ("not schema-checked"), never passed silently.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import referencing
from kubernetes_validate import utils as kv

# The Kubernetes version manifests are checked against. 1.33 has everything the components use as
# GA (native gRPC probes since 1.27, the `apps.kubernetes.io/pod-index` pod label since 1.32).
PINNED_K8S_VERSION = "1.33.0"
KUEUE_VERSION = "v0.13"      # kueue.x-k8s.io/v1beta1
KARPENTER_VERSION = "v1.6"   # karpenter.sh/v1

_DEFS = "/api/_definitions.json#/$defs/"
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"oneOf": [{"type": "string"}, {"type": "integer"}]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _DEFS + name}


def _object(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def _crd(group_version: str, kind: str, spec: dict[str, Any] | None,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"const": group_version},
        "kind": {"const": kind},
        "metadata": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        **(extra or {}),
    }
    if spec is not None:
        properties["spec"] = spec
    schema = _object(properties, required=["apiVersion", "kind", "metadata"])
    schema["$id"] = f"https://kubernetes.io/api/crd/{group_version}/{kind.lower()}"
    return schema


_KUEUE = "kueue.x-k8s.io/v1beta1"
_STOP_POLICY = {"enum": ["None", "Hold", "HoldAndDrain"]}
_FAIR_SHARING = _object({"weight": _QUANTITY})

# (apiVersion, kind) -> JSON schema (draft 2020-12).
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    (_KUEUE, "ResourceFlavor"): _crd(_KUEUE, "ResourceFlavor", _object({
        "nodeLabels": _STR_MAP,
        "nodeTaints": {"type": "array", "items": _ref("io.k8s.api.core.v1.Taint")},
        "tolerations": {"type": "array", "items": _ref("io.k8s.api.core.v1.Toleration")},
        "topologyName": {"type": "string"},
    })),
    (_KUEUE, "ClusterQueue"): _crd(_KUEUE, "ClusterQueue", _object({
        "resourceGroups": {"type": "array", "items": _object({
            "coveredResources": {"type": "array", "items": {"type": "string"}},
            "flavors": {"type": "array", "items": _object({
                "name": {"type": "string"},
                "resources": {"type": "array", "items": _object({
                    "name": {"type": "string"},
                    "nominalQuota": _QUANTITY,
                    "borrowingLimit": _QUANTITY,
                    "lendingLimit": _QUANTITY,
                }, required=["name", "nominalQuota"])},
            }, required=["name", "resources"])},
        }, required=["coveredResources", "flavors"])},
        "cohort": {"type": "string"},
        "queueingStrategy": {"enum": ["StrictFIFO", "BestEffortFIFO"]},
        "namespaceSelector": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
        "flavorFungibility": _object({
            "whenCanBorrow": {"enum": ["Borrow", "TryNextFlavor"]},
            "whenCanPreempt": {"enum": ["Preempt", "TryNextFlavor"]},
        }),
        "preemption": _object({
            "reclaimWithinCohort": {"enum": ["Never", "LowerPriority", "Any"]},
            "borrowWithinCohort": _object({
                "policy": {"enum": ["Never", "LowerPriority"]},
                "maxPriorityThreshold": {"type": "integer"},
            }),
            "withinClusterQueue": {"enum": ["Never", "LowerPriority", "LowerOrNewerEqualPriority"]},
        }),
        "admissionChecks": {"type": "array", "items": {"type": "string"}},
        "stopPolicy": _STOP_POLICY,
        "fairSharing": _FAIR_SHARING,
    })),
    (_KUEUE, "LocalQueue"): _crd(_KUEUE, "LocalQueue", _object({
        "clusterQueue": {"type": "string"},
        "stopPolicy": _STOP_POLICY,
        "fairSharing": _FAIR_SHARING,
    }, required=["clusterQueue"])),
    (_KUEUE, "WorkloadPriorityClass"): _crd(_KUEUE, "WorkloadPriorityClass", None, extra={
        "value": {"type": "integer"},
        "description": {"type": "string"},
    }) | {"required": ["apiVersion", "kind", "metadata", "value"]},
    ("karpenter.sh/v1", "NodePool"): _crd("karpenter.sh/v1", "NodePool", _object({
        "template": _object({
            "metadata": _object({"labels": _STR_MAP, "annotations": _STR_MAP}),
            "spec": _object({
                "nodeClassRef": _object({"group": {"type": "string"}, "kind": {"type": "string"},
                                         "name": {"type": "string"}}, required=["group", "kind", "name"]),
                "taints": {"type": "array", "items": _ref("io.k8s.api.core.v1.Taint")},
                "startupTaints": {"type": "array", "items": _ref("io.k8s.api.core.v1.Taint")},
                "requirements": {"type": "array", "items": _object({
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                    "minValues": {"type": "integer", "minimum": 1},
                }, required=["key", "operator"])},
                "expireAfter": {"type": "string"},
                "terminationGracePeriod": {"type": "string"},
            }, required=["nodeClassRef", "requirements"]),
        }, required=["spec"]),
        "disruption": _object({
            "consolidationPolicy": {"enum": ["WhenEmpty", "WhenEmptyOrUnderutilized"]},
            "consolidateAfter": {"type": "string"},
            "budgets": {"type": "array", "items": _object({
                "nodes": {"type": "string"},
                "schedule": {"type": "string"},
                "duration": {"type": "string"},
                "reasons": {"type": "array", "items": {"enum": ["Underutilized", "Empty", "Drifted"]}},
            })},
        }),
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
        "weight": {"type": "integer", "minimum": 1, "maximum": 100},
    }, required=["template"])),
}


def validate_manifests(manifests: Iterable[Mapping[str, Any]],
                       k8s_version: str = PINNED_K8S_VERSION) -> list[str]:
    """Every problem in every manifest, one line each: `<Kind>/<name>: <field.path>: <what is wrong>`.

    An empty list means every manifest was checked against a schema and passed.
    """
    errors: list[str] = []
    for index, manifest in enumerate(manifests):
        errors.extend(validate_manifest(manifest, k8s_version, where=f"manifest [{index}]"))
    return errors


def validate_manifest(manifest: Mapping[str, Any], k8s_version: str = PINNED_K8S_VERSION,
                      where: str = "manifest") -> list[str]:
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"{where}: apiVersion and kind must both be set to strings, got "
                f"apiVersion={api_version!r} kind={kind!r}"]
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    label = f"{kind}/{name if name else '<no metadata.name>'}"
    schema = CRD_SCHEMAS.get((api_version, kind)) or _builtin_schema(api_version, kind, k8s_version)
    if schema is None:
        return [f"{label}: not schema-checked: no schema for apiVersion {api_version} kind {kind} in "
                f"Kubernetes {k8s_version} or infra.k8s_schema.CRD_SCHEMAS; add one there"]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(k8s_version))
    problems = sorted(validator.iter_errors(dict(manifest)), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{label}: {_path(e.absolute_path) or '<root>'}: {_message(e)}" for e in problems]


def _path(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"{error.message} (unknown field: remove it or check its spelling)"
    return error.message


def _schema_dir(k8s_version: str) -> str:
    wanted = kv.major_minor(k8s_version.removeprefix("v"))
    available = [v for v in kv.all_versions() if kv.major_minor(v) == wanted]
    if not available:
        raise ValueError(f"k8s_version {k8s_version!r} is not bundled with kubernetes-validate; "
                         f"pick one of {', '.join(kv.all_versions())}")
    return f"kubernetes-json-schema/v{available[-1]}-local-strict"


def _builtin_schema(api_version: str, kind: str, k8s_version: str) -> dict[str, Any] | None:
    # "rbac.authorization.k8s.io/v1" -> "rbac-v1", "v1" -> "v1": kubernetes-validate's file naming.
    group, _, version = api_version.rpartition("/")
    stem = f"{group.split('.')[0]}-{version}" if group else version
    try:
        schema: dict[str, Any] = kv.schema_contents(f"{_schema_dir(k8s_version)}/{kind.lower()}-{stem}.json",
                                                    k8s_version)
    except FileNotFoundError:
        return None
    # The bundle has schemas for embedded types too (e.g. "affinity-v1"); only top-level kinds count.
    gvks = schema.get("x-kubernetes-group-version-kind", [])
    if not any(g.get("kind") == kind and g.get("version") == version and
               (g.get("group") or "") == group for g in gvks):
        return None
    return schema


@functools.lru_cache(maxsize=4)
def _registry(k8s_version: str) -> referencing.Registry:
    definitions = kv.schema_contents(f"{_schema_dir(k8s_version)}/_definitions.json", k8s_version)
    registry: referencing.Registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    return registry
