"""flyte_agent/pending_creates.py: an interrupted `up`'s pending creates become state resources a
destroy deletes (issue 8 item 6)."""

from __future__ import annotations

from typing import Any

from flyte_agent.pending_creates import adopt

STS = "urn:pulumi:f::graphfleet-fleets::graphfleet:fleet:GraphDataService$kubernetes:apps/v1:StatefulSet::f"


def _pending(urn: str, type_: str, metadata: dict[str, Any], op: str = "creating") -> dict[str, Any]:
    return {"type": op, "resource": {"urn": urn, "type": type_, "custom": True, "id": "",
                                     "inputs": {"kind": "StatefulSet", "metadata": metadata}}}


def test_a_pending_kubernetes_create_becomes_a_resource_with_the_providers_id() -> None:
    deployment = {"resources": [{"urn": "urn:stack", "type": "pulumi:pulumi:Stack"}],
                  "pending_operations": [_pending(STS, "kubernetes:apps/v1:StatefulSet", {"name": "f"})]}
    adopted = adopt(deployment, default_namespace="graphfleet")
    assert adopted is not None and adopted["pending_operations"] == []
    resource = adopted["resources"][-1]
    assert (resource["urn"], resource["id"]) == (STS, "graphfleet/f")
    assert resource["outputs"]["metadata"] == {"name": "f", "namespace": "graphfleet"}
    assert resource["outputs"]["__inputs"] == {"kind": "StatefulSet", "metadata": {"name": "f"}}
    assert adopted["resources"][0] == deployment["resources"][0], "the state's order is kept"


def test_an_explicit_namespace_wins_and_other_pending_operations_stay() -> None:
    update = _pending("urn:svc", "kubernetes:core/v1:Service", {"name": "s"}, op="updating")
    deployment = {"resources": [], "pending_operations": [
        _pending(STS, "kubernetes:apps/v1:StatefulSet", {"name": "f", "namespace": "other"}), update]}
    adopted = adopt(deployment, default_namespace="graphfleet")
    assert adopted is not None
    assert [r["id"] for r in adopted["resources"]] == ["other/f"]
    assert adopted["pending_operations"] == [update]


def test_nothing_to_adopt_is_no_import_and_unnamed_or_known_creates_are_dropped() -> None:
    assert adopt({"resources": [], "pending_operations": []}, "graphfleet") is None
    known = {"urn": STS, "type": "kubernetes:apps/v1:StatefulSet", "id": "graphfleet/f"}
    deployment = {"resources": [known], "pending_operations": [
        _pending(STS, "kubernetes:apps/v1:StatefulSet", {"name": "f"}),
        _pending("urn:random", "random:index/randomId:RandomId", {}),
        _pending("urn:unnamed", "kubernetes:core/v1:ConfigMap", {})]}
    adopted = adopt(deployment, "graphfleet")
    assert adopted is not None
    assert adopted["resources"] == [known] and adopted["pending_operations"] == []
