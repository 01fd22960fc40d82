"""Custom resources are validated against the upstream CRDs vendored in infra/crds at pinned versions."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from infra.cli import render_stack
from infra.k8s_schema import CRDS_DIR, crd_schemas, crd_scope, crd_sources, crd_version, validate_manifest
from infra.render import _CLUSTER_SCOPED_KINDS


@pytest.fixture(scope="module")
def custom_resources() -> list[dict[str, Any]]:
    found = []
    for stack in ("ltx1", "lva1"):
        _, manifests, _ = render_stack(stack)
        found += [m for m in manifests if (m["apiVersion"], m["kind"]) in crd_schemas()]
    return found


def test_vendored_crds_are_the_pinned_upstream_files() -> None:
    listed = {name: entry for project in crd_sources().values() for name, entry in project["files"].items()}
    on_disk = {p.name for p in CRDS_DIR.glob("*.yaml")} - {"SOURCES.yaml"}
    assert on_disk == set(listed)
    for name, entry in listed.items():
        assert hashlib.sha256((CRDS_DIR / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert (crd_version("kueue"), crd_version("karpenter"), crd_version("training-operator"),
            crd_version("prometheus-operator")) == ("v0.13.2", "v1.6.2", "v1.9.2", "v0.85.0")


def test_every_custom_resource_of_both_stacks_passes_its_upstream_crd(
        custom_resources: list[dict[str, Any]]) -> None:
    kinds = {m["kind"] for m in custom_resources}
    assert kinds == {"ResourceFlavor", "ClusterQueue", "LocalQueue", "NodePool"}
    assert [e for m in custom_resources for e in validate_manifest(m)] == []


def _one(custom_resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(m for m in custom_resources if m["kind"] == kind))


def test_karpenter_v1_requires_consolidate_after(custom_resources: list[dict[str, Any]]) -> None:
    # The hand-written schema this replaced had it optional; karpenter.sh/v1 requires it.
    node_pool = _one(custom_resources, "NodePool")
    del node_pool["spec"]["disruption"]["consolidateAfter"]
    name = node_pool["metadata"]["name"]
    assert validate_manifest(node_pool) == [
        f"NodePool/{name}: spec.disruption: 'consolidateAfter' is a required property"]


def test_upstream_patterns_and_unknown_fields_are_enforced(custom_resources: list[dict[str, Any]]) -> None:
    queue = _one(custom_resources, "ClusterQueue")
    queue["spec"]["cohort"] = "A100 pool"            # not a DNS subdomain
    queue["spec"]["cohortName"] = "a100"              # the v1beta2 spelling, unknown in v1beta1
    errors = validate_manifest(queue)
    assert len(errors) == 2
    assert "spec.cohort: 'A100 pool' does not match" in errors[1]
    assert "spec: Additional properties are not allowed ('cohortName' was unexpected)" in errors[0]
    flavor = _one(custom_resources, "ResourceFlavor")
    flavor["metadata"]["labels"] = {"team": ["not", "a", "string"]}   # metadata is a real ObjectMeta
    assert "metadata.labels.team" in validate_manifest(flavor)[0]


def test_our_cluster_scoped_kinds_match_the_crds_scope() -> None:
    # The mocks' ids, and which names need the datacenter prefix, follow the CRD's scope.
    for api_version, kind in crd_schemas():
        assert (kind in _CLUSTER_SCOPED_KINDS) == (crd_scope(api_version, kind) == "Cluster"), kind
