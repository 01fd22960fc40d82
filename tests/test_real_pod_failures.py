"""A fleet that cannot start, read the way the Pulumi provisioner reads it (`pods.KubernetesPods`, the
real `kubernetes` client) from a real kube-apiserver and kube-scheduler (tests/control_plane.py): the
scheduler's own Unschedulable condition and message, and a kubelet-style image-pull failure written
through the pod's status subresource, each become a failure naming the pod and the reason."""

from __future__ import annotations

import time

import pytest

from flyte_agent.pod_failures import CRASH_LOOP_RESTARTS, UNSCHEDULABLE_SECONDS, create_failure, fleet_failure
from flyte_agent.pods import KubernetesPods, pod_name
from infra import names
from infra.graph_service import APP_NAME, CONTAINER_NAME
from tests.control_plane import CONTROL_PLANE_TOOLS, ControlPlane, needs_tools

pytestmark = [pytest.mark.integration, needs_tools(*CONTROL_PLANE_TOOLS)]

NAMESPACE = "pod-failures"
FLEET = "run-podfail-n0"
PULL_MESSAGE = 'Back-off pulling image "registry.example/graph-engine:1"'


def _fleet_pod(cp: ControlPlane, ordinal: int) -> dict:
    """One server pod as the fleet's StatefulSet labels it, asking for a node no cluster has."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": pod_name(FLEET, ordinal), "namespace": NAMESPACE,
                        "labels": {"app.kubernetes.io/name": APP_NAME,
                                   "app.kubernetes.io/instance": names.object_name(FLEET)}},
           "spec": {"nodeSelector": {"graphfleet.test/pool": "absent"},
                    "containers": [{"name": CONTAINER_NAME, "image": "registry.example/graph-engine:1"}]}}
    assert cp.apply(pod).status_code in (200, 201)
    return pod


def _unschedulable(cp: ControlPlane, pod: dict) -> bool:
    conditions = cp.get(cp.path_of(pod)).get("status", {}).get("conditions", [])
    return any((c["type"], c["status"], c.get("reason")) == ("PodScheduled", "False", "Unschedulable")
               for c in conditions)


def test_the_schedulers_unschedulable_and_an_image_pull_failure_fail_the_fleet(
        control_plane: ControlPlane) -> None:
    cp = control_plane
    assert cp.apply({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": NAMESPACE}}).status_code in (200, 201)
    cp.add_node("podfail-any")  # a Ready node the pods' selector does not match
    first, second = _fleet_pod(cp, 0), _fleet_pod(cp, 1)
    cp.wait_for("the scheduler to mark both pods Unschedulable",
                lambda: _unschedulable(cp, first) and _unschedulable(cp, second))
    reader = KubernetesPods(str(cp.kubeconfig))

    found = reader.pods(NAMESPACE, FLEET)
    assert found is not None and sorted(found) == [pod_name(FLEET, 0), pod_name(FLEET, 1)]
    # Within the grace (a node autoscaler may still add a node) nothing fails; after it, the
    # scheduler's own words name why.
    assert fleet_failure(found, time.time(), UNSCHEDULABLE_SECONDS, CRASH_LOOP_RESTARTS) is None
    failure = fleet_failure(found, time.time() + UNSCHEDULABLE_SECONDS + 1, UNSCHEDULABLE_SECONDS,
                            CRASH_LOOP_RESTARTS)
    assert failure is not None
    assert failure.startswith(f"pod {NAMESPACE}/{pod_name(FLEET, 0)}: Unschedulable for ")
    assert "nodes are available" in failure, failure
    assert "didn't match Pod's node affinity/selector" in failure, failure

    # What a kubelet writes when the image cannot be pulled, through the status subresource the
    # kubelet uses: it fails the fleet at once, naming the container and the registry's message.
    status = {"status": {"containerStatuses": [{
        "name": CONTAINER_NAME, "image": "registry.example/graph-engine:1", "imageID": "", "ready": False,
        "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": PULL_MESSAGE}}}]}}
    patched = cp.request("PATCH", cp.path_of(second) + "/status", status,
                         content_type="application/merge-patch+json")
    assert patched.status_code == 200, patched.text
    found = reader.pods(NAMESPACE, FLEET)
    assert found is not None
    assert fleet_failure(found, time.time(), UNSCHEDULABLE_SECONDS, CRASH_LOOP_RESTARTS) == (
        f"pod {NAMESPACE}/{pod_name(FLEET, 1)}: container {CONTAINER_NAME} ImagePullBackOff: {PULL_MESSAGE}")


def test_pods_a_quota_refuses_fail_the_fleet_from_the_statefulsets_own_events(
        control_plane: ControlPlane) -> None:
    """kube-controller-manager's StatefulSet controller, refused by a ResourceQuota, records FailedCreate
    on the StatefulSet; no pod exists. Events of an earlier StatefulSet of the same name are not read."""
    cp = control_plane
    namespace, fleet = "quota-refused", "run-quota-n0"
    name = names.object_name(fleet)
    assert cp.apply({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": namespace}}).status_code in (200, 201)
    quota = {"apiVersion": "v1", "kind": "ResourceQuota",
             "metadata": {"name": "fleets", "namespace": namespace}, "spec": {"hard": {"pods": "0"}}}
    assert cp.apply(quota).status_code in (200, 201)
    labels = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": namespace},
           "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                        {"name": CONTAINER_NAME, "image": "registry.example/graph-engine:1"}]}}}}
    cp.wait_for("the quota's status (the admission plugin refuses only once it is computed)",
                lambda: "pods" in cp.get(cp.path_of(quota)).get("status", {}).get("hard", {}))
    assert cp.apply(sts).status_code in (200, 201)
    reader = KubernetesPods(str(cp.kubeconfig))
    refused = cp.wait_for("the controller's FailedCreate event",
                          lambda: reader.create_failures(namespace, fleet))
    assert reader.pods(namespace, fleet) == {}
    assert create_failure(refused, 0, 1, time.time(), UNSCHEDULABLE_SECONDS) is None  # within the grace
    failure = create_failure(refused, 0, 1, time.time() + UNSCHEDULABLE_SECONDS + 1, UNSCHEDULABLE_SECONDS)
    assert failure is not None and failure.startswith(f"create Pod {name}-0 in StatefulSet {name} failed")
    assert "exceeded quota: fleets" in failure, failure

    # The same name again, with room: the old StatefulSet's events (kept for an hour) are not its own.
    assert cp.request("DELETE", cp.path_of(sts)).status_code == 200
    cp.wait_for("the StatefulSet gone", lambda: cp.request("GET", cp.path_of(sts)).status_code == 404)
    assert cp.request("DELETE", cp.path_of(quota)).status_code == 200
    assert cp.apply(sts).status_code in (200, 201)
    cp.wait_for("its pod", lambda: reader.pods(namespace, fleet))
    assert reader.create_failures(namespace, fleet) == []
