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
    the CRDs are found at the versions we render; missing namespaces, then a missing Secret, then a
    Secret's missing key are named until they exist (and the Secret's values never are)."""
    import base64

    from infra.config import load_stack_config, stack_path
    from infra.prerequisites import PrerequisiteError, check, required_namespaces

    cp = control_plane
    base = load_stack_config(stack_path("lva1"))
    names = {"dataServices": "pre-data", "sharedServices": "pre-shared", "connector": "pre-system",
             "training": "pre-training"}
    config = base.model_copy(update={"kubernetes_context": "graphfleet-test",
                                     "namespaces": base.namespaces.model_validate(names)})

    def problems() -> list[str]:
        with pytest.raises(PrerequisiteError) as refused:
            check(config, str(cp.kubeconfig))
        return str(refused.value).splitlines()[1:]

    lines = problems()
    namespaces = [line.split()[1] for line in lines if line.lstrip().startswith("namespace ")]
    assert namespaces == required_namespaces(config)  # no CRD missing
    # lva1's connector reads the state backend's Secret (url by secretKeyRef, passphrase mounted).
    url_secret = config.connector.secrets.backend_url.name
    assert lines[len(namespaces):] == [
        f"  Secret {url_secret} does not exist in namespace pre-system (named by "
        "graphfleet:connector.secrets.backendUrl, graphfleet:connector.secrets.passphrase): create it with "
        "keys url, passphrase before the first `up` (docs/design.md, 'What the datacenter stack owns')"]
    for name in required_namespaces(config):
        assert cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).status_code \
            in (200, 201)

    def secret(data: dict[str, str]) -> None:
        manifest = {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": url_secret, "namespace": "pre-system"},
                    "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        assert cp.apply(manifest).status_code in (200, 201)

    secret({"url": "s3://state-bucket-value"})
    lines = problems()
    assert not any("state-bucket-value" in line for line in lines)
    assert [line.strip() for line in lines] == [
        f"Secret {url_secret} in namespace pre-system has no key passphrase (named by "
        "graphfleet:connector.secrets.passphrase): add it before the first `up` (docs/design.md, 'What the "
        "datacenter stack owns')"]
    secret({"url": "s3://state-bucket-value", "passphrase": "p"})
    check(config, str(cp.kubeconfig))
