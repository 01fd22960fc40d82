"""The workflow's graph-client task pods (train, evaluate) as a real kube-apiserver admits them in a
namespace enforcing the restricted Pod Security Standard (tests/control_plane.py), from the task
templates flytekit serializes: what Flyte would create in a team's `<project>-<domain>` namespace;
and the datacenter stack's prerequisite check (infra/prerequisites.py) reading that real cluster."""

from __future__ import annotations

import json

import pytest

from tests.control_plane import CONTROL_PLANE_TOOLS, ControlPlane, needs_tools
from tests.test_gnn_training import FLEET_CLIENTS, serialize_tasks

pytestmark = [pytest.mark.integration, needs_tools(*CONTROL_PLANE_TOOLS)]


@pytest.mark.parametrize("trainer", ["local", "pytorchjob"])
def test_graph_client_task_pods_are_admitted_under_restricted(control_plane: ControlPlane,
                                                              trainer: str) -> None:
    cp = control_plane
    namespace = f"team-{trainer}-development"
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                     "pod-security.kubernetes.io/enforce-version": "latest"}}}
    assert cp.apply(ns).status_code in (200, 201)
    done = serialize_tasks(trainer)
    assert done.returncode == 0, done.stderr[-2000:]
    tasks = json.loads(done.stdout.strip().splitlines()[-1])
    for name in sorted(FLEET_CLIENTS):
        spec = tasks[name]["spec"]
        for container in spec["containers"]:
            # Flyte rewrites these before it creates the pod: flytekit's resource names (gpu) and the
            # templated args are not what admission judges.
            container.pop("resources", None)
            container["image"] = container.get("image") or "registry.example/gnn:1"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name.replace('_', '-')}-{trainer}", "namespace": namespace,
                            "labels": tasks[name]["labels"]},
               "spec": spec}
        r = cp.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert r.status_code == 201, (name, r.text)


def test_the_prerequisite_check_reads_a_real_cluster(control_plane: ControlPlane) -> None:
    """`pulumi up`'s first step (infra/__main__.py) against a real API server with the vendored CRDs:
    the CRDs are found at the versions we render; missing namespaces are named until they exist."""
    from infra.config import load_stack_config, stack_path
    from infra.prerequisites import PrerequisiteError, check, required_namespaces

    cp = control_plane
    base = load_stack_config(stack_path("lva1"))
    names = {"dataServices": "pre-data", "sharedServices": "pre-shared", "connector": "pre-system",
             "training": "pre-training"}
    config = base.model_copy(update={"kubernetes_context": "graphfleet-test",
                                     "namespaces": base.namespaces.model_validate(names)})
    with pytest.raises(PrerequisiteError) as refused:
        check(config, str(cp.kubeconfig))
    lines = str(refused.value).splitlines()[1:]
    assert [line.split()[1] for line in lines] == required_namespaces(config)  # only namespaces missing
    for name in required_namespaces(config):
        assert cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).status_code \
            in (200, 201)
    check(config, str(cp.kubeconfig))
