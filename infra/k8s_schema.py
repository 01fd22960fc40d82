"""Validate rendered manifests against the Kubernetes OpenAPI schema, offline.

Built-in kinds are checked with the strict schemas bundled in `kubernetes-validate` for one pinned
Kubernetes version (unknown fields are errors, as `kubectl apply --validate=strict` would make them).
Custom resources (Kueue, Karpenter, Kubeflow training-operator) are checked against the upstream
CRDs vendored byte for byte in `infra/crds/` at the versions `infra/crds/SOURCES.yaml` pins: each
served version's `openAPIV3Schema`, made strict the same way (an object that does not preserve
unknown fields refuses them, where the API server would silently prune them) and with `metadata`
checked as a real ObjectMeta. A kind with no schema at all is reported as an error ("not
schema-checked"), never passed silently.

Not checked here: the CRDs' CEL rules (`x-kubernetes-validations`), which need the API server's CEL
environment; the real-engine tests install the same CRDs into kube-apiserver for those.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

# The Kubernetes version manifests are checked against. 1.33 has everything the components use as
# GA (native gRPC probes since 1.27, the `apps.kubernetes.io/pod-index` pod label since 1.32).
PINNED_K8S_VERSION = "1.33.0"
CRDS_DIR = Path(__file__).resolve().parent / "crds"

_DEFS = "/api/_definitions.json#/$defs/"
_OBJECT_META = {"$ref": _DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


@functools.cache
def crd_sources() -> dict[str, Any]:
    """`infra/crds/SOURCES.yaml`: project -> module, version, go_sum, repository, files."""
    projects: dict[str, Any] = yaml.safe_load((CRDS_DIR / "SOURCES.yaml").read_text())["projects"]
    return projects


def crd_version(project: str) -> str:
    """The pinned release of `kueue`, `karpenter` or `training-operator`, e.g. "v0.13.2"."""
    return str(crd_sources()[project]["version"])


@functools.cache
def crds() -> list[dict[str, Any]]:
    """Every vendored CustomResourceDefinition, parsed."""
    return [yaml.safe_load((CRDS_DIR / name).read_text())
            for project in crd_sources().values() for name in project["files"]]


def _strict(schema: Any, top: bool = False) -> Any:
    """A CRD's structural OpenAPI v3 schema as a strict JSON schema (draft 2020-12)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "default", "description")}
    if top:
        out.setdefault("properties", {})["metadata"] = _OBJECT_META
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every vendored CRD."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in crds():
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            api_version = f"{group}/{version['name']}"
            schema = _strict(version["schema"]["openAPIV3Schema"], top=True)
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            schema["$id"] = f"https://kubernetes.io/api/crd/{api_version}/{kind.lower()}"
            schemas[(api_version, kind)] = schema
    return schemas


def crd_scope(api_version: str, kind: str) -> str | None:
    """`Cluster` or `Namespaced` for a vendored CRD's kind, else None."""
    for crd in crds():
        group = crd["spec"]["group"]
        if crd["spec"]["names"]["kind"] == kind and any(
                f"{group}/{v['name']}" == api_version for v in crd["spec"]["versions"]):
            return str(crd["spec"]["scope"])
    return None


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
    schema = crd_schemas().get((api_version, kind)) or _builtin_schema(api_version, kind, k8s_version)
    if schema is None:
        return [f"{label}: not schema-checked: no schema for apiVersion {api_version} kind {kind} in "
                f"Kubernetes {k8s_version} or the CRDs vendored in infra/crds; vendor the upstream CRD"]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(k8s_version))
    problems = sorted(validator.iter_errors(dict(manifest)), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{label}: {_path(e.absolute_path) or '<root>'}: {_message(e)}" for e in problems]


def atomic_lists(manifest: Mapping[str, Any], k8s_version: str = PINNED_K8S_VERSION) -> list[str]:
    """Paths of the built-in object's fields that are atomic lists (`x-kubernetes-list-type: atomic`):
    under server-side apply one manager owns all of such a list, so a patch that sets one takes the
    whole list from whoever else writes it (the kubelet, a controller)."""
    schema = _builtin_schema(str(manifest.get("apiVersion")), str(manifest.get("kind")), k8s_version)
    if schema is None:
        return []
    definitions = kv.schema_contents(f"{_schema_dir(k8s_version)}/_definitions.json", k8s_version)["$defs"]

    def walk(value: Any, node: Mapping[str, Any], path: str) -> Iterable[str]:
        if "$ref" in node:
            node = {**definitions[node["$ref"].rsplit("/", 1)[1]],
                    **{k: v for k, v in node.items() if k != "$ref"}}
        if isinstance(value, list):
            if node.get("x-kubernetes-list-type") == "atomic":
                yield path
            else:
                for index, item in enumerate(value):
                    yield from walk(item, node.get("items") or {}, f"{path}[{index}]")
        elif isinstance(value, Mapping):
            properties = node.get("properties") or {}
            for key, item in value.items():
                if key in properties:
                    yield from walk(item, properties[key], f"{path}.{key}" if path else str(key))

    return list(walk(manifest, schema, ""))


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
