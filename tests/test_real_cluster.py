"""The datacenter stacks and the connector's fleets against a real kube-apiserver (tests/control_plane.py).

Each stack's rendered objects are server-side applied as `pulumi up` would send them (the real API
schemas, the real Kueue/Karpenter/Kubeflow CRDs with their CEL rules, admission with PodSecurity
enforcing `restricted` where our namespaces say so); the controllers create the pods and kwok runs
them, so "every pod our components create is admitted" is what the cluster says, not a policy of
ours. The connector's Role is exercised as its ServiceAccount through impersonation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.control_plane import CONTROL_PLANE_TOOLS, ControlPlane, needs_tools

pytestmark = [pytest.mark.integration, needs_tools(*CONTROL_PLANE_TOOLS)]

STACKS = ("ltx1", "lva1")
# Applied first: what later objects live in or refer to.
_ORDER = {"Namespace": 0, "Node": 1, "PriorityClass": 1, "ResourceFlavor": 1, "ServiceAccount": 2}
# The verbs pulumi-kubernetes uses on the objects it manages (create, read, await, update, delete).
PROVIDER_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


@dataclass
class Deployed:
    stack: str
    manifests: list[dict[str, Any]]
    warnings: list[str]


def _labels_key(selector: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((selector or {}).items()))


def _pod_specs(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"]["spec"] for m in manifests if m["kind"] in ("StatefulSet", "Deployment")]


def _add_nodes_for(cp: ControlPlane, stack: str, manifests: list[dict[str, Any]]) -> None:
    """The machines the stack expects: its static GPU nodes (which it patches) and a kwok node for
    each node selector its workloads use."""
    for m in manifests:
        if m["kind"] == "Node":
            cp.add_node(m["metadata"]["name"])
    selectors = {_labels_key(spec.get("nodeSelector")) for spec in _pod_specs(manifests)}
    for i, selector in enumerate(sorted(selectors)):
        cp.add_node(f"{stack}-node-{i}", dict(selector))


def _apply_all(cp: ControlPlane, manifests: list[dict[str, Any]], **kw: Any) -> tuple[list[str], list[str]]:
    """Apply every object; returns (errors, the server's warnings)."""
    errors, warnings = [], []
    for m in sorted(manifests, key=lambda m: _ORDER.get(m["kind"], 3)):
        r = cp.apply(m, **kw)
        what = f"{m['kind']}/{m['metadata']['name']}"
        warnings += [f"{what}: {w}" for w in r.headers.get("Warning", "").split(", ") if w]
        if r.status_code not in (200, 201):
            errors.append(f"{what}: {r.status_code} {r.json().get('message', r.text)}")
    return errors, warnings


def _teardown(cp: ControlPlane, manifests: list[dict[str, Any]]) -> None:
    """Delete what the stack created (like `pulumi destroy`) so the next stack starts clean."""
    namespaces = [m["metadata"]["name"] for m in manifests if m["kind"] == "Namespace"]
    for m in manifests:
        if m["kind"] not in ("Node",) and (m["kind"] == "Namespace" or "namespace" not in m["metadata"]):
            cp.request("DELETE", cp.path_of(m))
    for ns in namespaces:
        path = f"/api/v1/namespaces/{ns}"
        cp.wait_for(f"namespace {ns} deleted", lambda path=path: cp.request("GET", path).status_code == 404,
                    timeout=120)


@pytest.fixture(scope="module", params=STACKS)
def deployed(request: pytest.FixtureRequest, control_plane: ControlPlane) -> Iterator[Deployed]:
    from infra.cli import render_stack

    stack = request.param
    _, manifests, _ = render_stack(stack)
    _add_nodes_for(control_plane, stack, manifests)
    # Namespaces the stack places objects in but does not declare exist before it (Flyte's
    # <project>-<domain> namespaces): create them as the cluster would have them.
    declared = {m["metadata"]["name"] for m in manifests if m["kind"] == "Namespace"}
    used = {m["metadata"]["namespace"] for m in manifests if m["metadata"].get("namespace")}
    manifests = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                 for ns in sorted(used - declared)] + manifests
    errors, warnings = _apply_all(control_plane, manifests)
    assert errors == [], f"the real apiserver refused objects of {stack}:\n" + "\n".join(errors)
    try:
        yield Deployed(stack, manifests, warnings)
    finally:
        _teardown(control_plane, manifests)


def _events(cp: ControlPlane, namespace: str) -> list[str]:
    items = cp.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['reason']}: {e['message']}"
            for e in items if e["type"] == "Warning"]


def _workloads_ready(cp: ControlPlane, manifests: list[dict[str, Any]]) -> list[str]:
    """The workloads not (yet) fully ready, as 'kind/name: ready/desired'."""
    waiting = []
    for m in manifests:
        if m["kind"] in ("StatefulSet", "Deployment"):
            live = cp.get(cp.path_of(m))
            desired, ready = live["spec"].get("replicas", 1), live.get("status", {}).get("readyReplicas", 0)
            if ready != desired:
                waiting.append(f"{m['kind']}/{m['metadata']['name']}: {ready}/{desired}")
    return waiting


def test_restricted_pod_security_is_enforced_for_real(control_plane: ControlPlane) -> None:
    # The control: a pod that breaks `restricted` is refused, so the admissions below mean something.
    cp = control_plane
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "psa-control", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    assert cp.apply(ns).status_code in (200, 201)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": "psa-control"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    r = cp.request("POST", "/api/v1/namespaces/psa-control/pods", pod)
    assert r.status_code == 403 and "violates PodSecurity" in r.json()["message"], r.text


def test_every_stack_object_is_accepted_by_the_real_apiserver_and_crds(deployed: Deployed) -> None:
    # The fixture applied them all (it fails on any refusal); no object drew a warning either
    # (deprecated APIs, PodSecurity `warn` on pod templates, unknown fields).
    assert deployed.warnings == []


def test_a_second_field_manager_applying_the_same_objects_meets_no_conflict(
        deployed: Deployed, control_plane: ControlPlane) -> None:
    """Each `up` of pulumi-kubernetes applies under a field manager of its own (`pulumi-kubernetes-<random>`,
    provider.go fieldManagerName, 4.32.0): a retried `up` after a killed one re-applies what the first
    made. An atomic field we render short of what the apiserver defaults into it (a `fieldRef` without
    `apiVersion`) then differs from the live value and conflicts: recovery failed on it in a trial. So does
    an omitempty field rendered `false`, which the apiserver does not store. The stack's objects were
    applied by the fixture; a connector's fleet is applied here first, then each again by another manager."""
    cp = control_plane
    _, namespace = _connector_identity(deployed.manifests)
    fleet = _fleet_manifests(namespace)
    for m in fleet:
        assert cp.apply(m, manager="pulumi-kubernetes-first").status_code in (200, 201)
    conflicts = []
    for m in [*deployed.manifests, *fleet]:
        r = cp.apply(m, manager="pulumi-kubernetes-second", force=False)
        if r.status_code == 409:
            conflicts.append(f"{m['kind']}/{m['metadata']['name']}: {r.json().get('message')}")
    for m in fleet:
        cp.request("DELETE", cp.path_of(m))
    assert conflicts == [], "\n".join(conflicts)


def test_every_pod_of_the_stack_is_admitted_under_restricted_and_runs(
        deployed: Deployed, control_plane: ControlPlane) -> None:
    cp = control_plane
    namespaces = {m["metadata"]["namespace"] for m in deployed.manifests
                  if m["kind"] in ("StatefulSet", "Deployment")}
    for ns in namespaces:
        labels = cp.get(f"/api/v1/namespaces/{ns}")["metadata"]["labels"]
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", ns
    try:
        cp.wait_for("every workload's pods ready", lambda: not _workloads_ready(cp, deployed.manifests),
                    timeout=90)
    except TimeoutError:
        pytest.fail(f"not ready: {_workloads_ready(cp, deployed.manifests)}; warning events: "
                    f"{[e for ns in namespaces for e in _events(cp, ns)]}")
    refused = [e for ns in namespaces for e in _events(cp, ns) if "FailedCreate" in e]
    assert refused == []


# --- the connector's Role, as its ServiceAccount ------------------------------------------------

def _connector_identity(manifests: list[dict[str, Any]]) -> tuple[str, str]:
    """(impersonated username, the namespace where its Role lets it manage fleets) from the rendered
    stack. The account has other Roles too (listing pods where graph clients run), so the one that
    grants StatefulSets is chosen."""
    sa = next(m for m in manifests if m["kind"] == "ServiceAccount" and "connector" in m["metadata"]["name"])
    roles = {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in manifests if m["kind"] == "Role"}

    def manages_fleets(binding: dict[str, Any]) -> bool:
        role = roles[(binding["metadata"]["namespace"], binding["roleRef"]["name"])]
        return any("statefulsets" in rule.get("resources", []) for rule in role["rules"])

    binding = next(m for m in manifests if m["kind"] == "RoleBinding" and manages_fleets(m)
                   if any(s.get("name") == sa["metadata"]["name"] for s in m["subjects"]))
    return f"system:serviceaccount:{sa['metadata']['namespace']}:{sa['metadata']['name']}", \
        binding["metadata"]["namespace"]


def _fleet_manifests(namespace: str) -> list[dict[str, Any]]:
    from flyte_agent.fleet_program import fleet_program
    from flyte_agent.provisioner import Provision
    from flyte_agent.settings import Settings
    from infra.render import render
    from infra.spec import DataServiceSpec

    settings = Settings(backend="pulumi", namespace=namespace)
    p = Provision(name="rbac-probe", spec=DataServiceSpec(graph_uri="s3://graphs/cora", partitions=2),
                  owner="proj/dev", execution="proj/dev/x/n0", created_at=time.time())
    return render(fleet_program(p, settings), stack="rbac-probe", project="graphfleet-fleets").manifests()


def _allowed(cp: ControlPlane, user: str, namespace: str, verb: str, resource: str, group: str = "",
             name: str = "") -> bool:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                              "resource": resource, "name": name}}}
    r = cp.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review, as_user=user)
    r.raise_for_status()
    return bool(r.json()["status"].get("allowed"))


def test_connector_can_manage_every_object_of_a_fleet(
        deployed: Deployed, control_plane: ControlPlane) -> None:
    cp = control_plane
    user, namespace = _connector_identity(deployed.manifests)
    fleet = _fleet_manifests(namespace)
    assert fleet
    refused = []
    for m in fleet:
        r = cp.apply(m, dry_run=True, as_user=user, manager="pulumi-kubernetes")
        if r.status_code not in (200, 201):
            refused.append(f"apply {m['kind']}/{m['metadata']['name']}: {r.status_code} "
                           f"{r.json().get('message')}")
        plural, _ = cp.resource(m["apiVersion"], m["kind"])
        group = m["apiVersion"].rpartition("/")[0]
        refused += [f"{verb} {plural}" for verb in PROVIDER_VERBS
                    if not _allowed(cp, user, namespace, verb, plural, group)]
    assert refused == []


def test_connector_can_watch_events_as_pulumi_kubernetes_awaits_need(
        deployed: Deployed, control_plane: ControlPlane) -> None:
    user, namespace = _connector_identity(deployed.manifests)
    missing = [f"{verb} {group or 'core'}/events" for group in ("", "events.k8s.io")
               for verb in ("get", "list", "watch")
               if not _allowed(control_plane, user, namespace, verb, "events", group)]
    assert missing == []


def test_connector_cannot_read_secrets(deployed: Deployed, control_plane: ControlPlane) -> None:
    cp = control_plane
    user, namespace = _connector_identity(deployed.manifests)
    r = cp.request("GET", f"/api/v1/namespaces/{namespace}/secrets", as_user=user)
    assert r.status_code == 403, r.text
    assert not any(_allowed(cp, user, namespace, verb, "secrets") for verb in ("get", "list", "watch"))


def test_connector_reads_executions_flyteworkflows_and_nothing_else_where_clients_run(
        deployed: Deployed, control_plane: ControlPlane) -> None:
    """gc follows each holder's FlyteWorkflow (flyte_agent/executions.py) in the teams' namespaces."""
    cp = control_plane
    user, fleets_namespace = _connector_identity(deployed.manifests)
    namespaces = sorted({m["metadata"]["namespace"] for m in deployed.manifests
                         if m["kind"] == "Role" and m["metadata"]["namespace"] != fleets_namespace})
    assert namespaces
    for namespace in namespaces:
        assert _allowed(cp, user, namespace, "get", "flyteworkflows", "flyte.lyft.com"), namespace
        assert not any(_allowed(cp, user, namespace, verb, "flyteworkflows", "flyte.lyft.com")
                       for verb in ("list", "update", "patch", "delete")), namespace
        assert not any(_allowed(cp, user, namespace, verb, resource)
                       for verb in ("get", "list") for resource in ("pods", "secrets")), namespace


def test_connector_cannot_delete_a_shared_service(deployed: Deployed, control_plane: ControlPlane) -> None:
    cp = control_plane
    user, namespace = _connector_identity(deployed.manifests)
    # Every StatefulSet and Service of the stack is long-lived (shared services, the connector's own).
    shared = [m for m in deployed.manifests if m["kind"] in ("StatefulSet", "Service")]
    assert any(m["kind"] == "StatefulSet" for m in shared), "the stack renders a shared service"
    deletable = [f"{m['kind']}/{m['metadata']['name']}" for m in shared
                 if cp.request("DELETE", cp.path_of(m), as_user=user,
                               params={"dryRun": "All"}).status_code != 403]
    assert deletable == []
