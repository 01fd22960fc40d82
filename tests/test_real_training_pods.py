"""The workflow's graph-client task pods (train, evaluate) as a real kube-apiserver admits them in a
namespace enforcing the restricted Pod Security Standard (tests/control_plane.py), from the task
templates flytekit serializes: what Flyte would create in a team's `<project>-<domain>` namespace."""

from __future__ import annotations

import json

import pytest

from tests.control_plane import ControlPlane
from tests.test_gnn_training import FLEET_CLIENTS, serialize_tasks

pytestmark = pytest.mark.integration


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
               "metadata": {"name": f"{name}-{trainer}", "namespace": namespace,
                            "labels": tasks[name]["labels"]},
               "spec": spec}
        r = cp.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert r.status_code == 201, (name, r.text)
