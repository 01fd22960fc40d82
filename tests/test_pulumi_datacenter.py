"""`pulumi up -s <datacenter>` with the real engine, as an operator runs it (issue 17).

The project is the repository's own (Pulumi.yaml, stacks/, `main: infra/`, the .venv `make setup` built
from the lock that `pulumi install` reads), copied to a scratch folder so the CLI's writes to the stack
file (its `encryptionsalt`) stay out of the checkout. The CLI, the Python language host and
pulumi-kubernetes are `make tools`' builds (tests/pulumi_engine.py); the cluster is the control-plane
fixture, reached through a kubeconfig context named as the stack file's `kubernetes:context`. The
prerequisites are made first, in the documented bootstrap order (docs/design.md, "What the datacenter
stack owns"): kwok nodes, namespaces, the Secrets the stack names.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig, load_stack_config, stack_path
from tests.control_plane import REPO, ControlPlane
from tests.pulumi_engine import engine_env, needs_engine
from tests.test_real_cluster import _add_nodes_for

pytestmark = needs_engine()

STACKS = ("ltx1", "lva1")
_UP_TIMEOUT_S = 600


@dataclass
class Project:
    stack: str
    dir: Path
    env: dict[str, str]
    config: StackConfig
    manifests: list[dict[str, Any]]
    bootstrap: dict[str, Any]   # the cluster as the bootstrap left it (`snapshot`)

    @property
    def stack_file(self) -> Path:
        return self.dir / "stacks" / f"Pulumi.{self.stack}.yaml"


def pulumi(project: Project, *args: str, env: dict[str, str] | None = None,
           timeout: float = _UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pulumi", *args, "--non-interactive", "-s", project.stack], cwd=project.dir,
                          env=env or project.env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def snapshot(cp: ControlPlane, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Every object of the kinds the stack renders (in its namespaces, or cluster-wide for cluster-scoped
    kinds): name, labels, annotations, taints."""
    kinds = {(m["apiVersion"], m["kind"]) for m in manifests}
    namespaces = sorted({m["metadata"]["namespace"] for m in manifests if m["metadata"].get("namespace")}
                        | {m["metadata"]["name"] for m in manifests if m["kind"] == "Namespace"})
    out: dict[str, Any] = {}
    for api_version in sorted({version for version, _ in kinds}):
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        served = cp.request("GET", base)
        if served.status_code == 404:
            continue  # its CRD is not installed: no object of it exists
        for r in served.json()["resources"]:
            if "/" in r["name"] or (api_version, r["kind"]) not in kinds:
                continue
            paths = ([f"{base}/namespaces/{ns}/{r['name']}" for ns in namespaces] if r["namespaced"]
                     else [f"{base}/{r['name']}"])
            for path in paths:
                # A CRD's resource answers 429 while its storage starts, just after the CRD is established.
                listing = cp.wait_for(f"list {path}", lambda path=path: (
                    lambda resp: resp.json() if resp.status_code == 200 else None)(cp.request("GET", path)))
                for item in listing["items"]:
                    out[_key(r["kind"], item)] = _observed(r["kind"], item)
    return out


def _key(kind: str, item: dict[str, Any]) -> str:
    return f"{kind}/{item['metadata'].get('namespace', '')}/{item['metadata']['name']}"


def _observed(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """What a destroy must put back: labels, annotations (but controllers' own) and a node's taints (but
    the node lifecycle controller's, which come and go while a node starts)."""
    meta = item["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(("kwok.x-k8s.io", "node.alpha", "deployment.kubernetes.io",
                                        "kubectl.kubernetes.io"))}
    taints = [t for t in (item.get("spec") or {}).get("taints") or []
              if not t["key"].startswith("node.kubernetes.io/")]
    return {"labels": meta.get("labels") or {}, "annotations": annotations,
            "taints": taints if kind == "Node" else None}


def _kubeconfig(cp: ControlPlane, context: str, path: Path) -> Path:
    """The fixture's kubeconfig with its context named as the stack file's `kubernetes:context`."""
    config = yaml.safe_load(cp.kubeconfig.read_text())
    config["contexts"][0]["name"] = config["current-context"] = context
    path.write_text(yaml.safe_dump(config))
    return path


def _bootstrap(cp: ControlPlane, project_config: StackConfig, manifests: list[dict[str, Any]]) -> None:
    """What the operator makes before the first `up`, in the documented order."""
    from infra.prerequisites import required_namespaces, required_secrets

    _add_nodes_for(cp, project_config.datacenter.name, manifests)
    for namespace in required_namespaces(project_config):
        assert cp.apply({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": namespace}}).status_code in (200, 201)
    # A new namespace is finished by controllers (its `default` ServiceAccount, the root CA ConfigMap):
    # the bootstrap is done once they have, or a snapshot taken now would miss them.
    for namespace in required_namespaces(project_config):
        for made in ("serviceaccounts/default", "configmaps/kube-root-ca.crt"):
            path = f"/api/v1/namespaces/{namespace}/{made}"
            cp.wait_for(path, lambda path=path: cp.request("GET", path).status_code == 200)
    for secret in required_secrets(project_config):
        data = {key: base64.b64encode(b"bootstrap").decode() for key in secret.keys or ["credentials"]}
        manifest = {"apiVersion": "v1", "kind": "Secret", "data": data,
                    "metadata": {"name": secret.name, "namespace": secret.namespace}}
        assert cp.apply(manifest).status_code in (200, 201)


def scratch_project(cp: ControlPlane, stack: str, tmp: Path) -> Project:
    """The repository's project copied into `tmp` with its own state backend, PULUMI_HOME and a kubeconfig
    naming the stack's context, after the documented bootstrap of the cluster (idempotent); no stack yet."""
    from infra.cli import render_stack

    d = tmp / "project"
    d.mkdir()
    shutil.copy(REPO / "Pulumi.yaml", d / "Pulumi.yaml")
    shutil.copytree(REPO / "stacks", d / "stacks")
    for shared in ("infra", ".venv"):  # the program and the environment `pulumi install` makes
        (d / shared).symlink_to(REPO / shared)
    config = load_stack_config(stack_path(stack))
    kubeconfig = _kubeconfig(cp, config.kubernetes_context, tmp / "kubeconfig")
    _, manifests, _ = render_stack(stack)
    _bootstrap(cp, config, manifests)
    return Project(stack, d, engine_env(tmp / "pulumi-home", tmp / "backend", kubeconfig), config, manifests,
                   snapshot(cp, manifests))


def release(cp: ControlPlane, project: Project) -> None:
    """Destroy the stack, then delete the bootstrap's namespaces, for the next module."""
    from infra.prerequisites import required_namespaces

    pulumi(project, "destroy", "--yes", "--skip-preview")
    for namespace in required_namespaces(project.config):
        cp.request("DELETE", f"/api/v1/namespaces/{namespace}")
    for namespace in required_namespaces(project.config):
        cp.wait_for(f"namespace {namespace} deleted", lambda n=namespace: cp.request(
            "GET", f"/api/v1/namespaces/{n}").status_code == 404, timeout=120)


@pytest.fixture(scope="module", params=STACKS)
def project(request: pytest.FixtureRequest, control_plane: ControlPlane,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    stack = request.param
    p = scratch_project(control_plane, stack, tmp_path_factory.mktemp(f"datacenter-{stack}"))
    ok(subprocess.run(["pulumi", "stack", "init", stack, "--non-interactive"], cwd=p.dir, env=p.env,
                      capture_output=True, text=True, timeout=120))
    try:
        yield p
    finally:
        release(control_plane, p)


def test_up_creates_every_object_and_a_second_up_changes_nothing(project: Project,
                                                                 control_plane: ControlPlane) -> None:
    cp = control_plane
    ok(pulumi(project, "up", "--yes", "--skip-preview"))
    absent = [f"{m['kind']}/{m['metadata']['name']}" for m in project.manifests
              if cp.request("GET", cp.path_of(m)).status_code != 200]
    assert absent == []
    # Every workload reached Ready: the provider's await said so, and the cluster agrees.
    for m in project.manifests:
        if m["kind"] in ("StatefulSet", "Deployment"):
            live = cp.get(cp.path_of(m))
            assert live["status"].get("readyReplicas") == live["spec"]["replicas"], m["metadata"]["name"]
    ok(pulumi(project, "up", "--yes", "--skip-preview", "--expect-no-changes"))


def test_refresh_finds_no_drift(project: Project) -> None:
    ok(pulumi(project, "refresh", "--yes", "--skip-preview", "--expect-no-changes"))


def test_the_same_stack_from_another_kubeconfig_path_changes_nothing(project: Project,
                                                                      tmp_path: Path) -> None:
    # The trial's finding: the provider's inputs recorded $KUBECONFIG's path, so an operator on another
    # machine (the same cluster, another path) saw a provider update and `--expect-no-changes` failed.
    moved = tmp_path / "elsewhere" / "config"
    moved.parent.mkdir()
    shutil.copy(project.env["KUBECONFIG"], moved)
    ok(pulumi(project, "preview", "--expect-no-changes", env={**project.env, "KUBECONFIG": str(moved)}))


def _edit(stack_file: Path) -> None:
    """Changes of each kind graphfleet diff tells apart: in place, replace, delete, create."""
    document = yaml.safe_load(stack_file.read_text())
    config = document["config"]
    connector = config["graphfleet:connector"]
    connector["image"] = connector["image"].rsplit(":", 1)[0] + ":9.9.9"       # update (Deployment)
    pool = config["graphfleet:gpuPools"][0]
    pool["teams"][0]["gpus"] = int(pool["teams"][0]["gpus"]) // 2              # update (ClusterQueue)
    pool["teams"] = pool["teams"][:-1]                                           # delete (queues)
    shared = config.get("graphfleet:sharedServices") or []
    if shared:
        shared[0]["spec"]["partitions"] = int(shared[0]["spec"]["partitions"]) * 2  # StatefulSet update
    stack_file.write_text(yaml.safe_dump(document))


def _preview_changes(out: str) -> dict[str, str]:
    """Kind/namespace/name -> create | update | replace | delete, from `pulumi preview --json`."""
    changes = {}
    for step in json.loads(out).get("steps", []):
        state = step.get("newState") or step.get("oldState") or {}
        if not state.get("type", "").startswith("kubernetes:") or step["op"] in ("same", "read"):
            continue
        meta = state["inputs"].get("metadata", {})
        namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
        key = f"{state['inputs']['kind']}/{namespace}{meta['name']}"
        op = {"create-replacement": "replace", "delete-replaced": "replace", "replace": "replace"}.get(
            step["op"], step["op"])
        changes[key] = op
    return changes


def test_preview_of_an_edited_stack_file_agrees_with_graphfleet_diff(project: Project) -> None:
    from infra.cli import render_objects
    from infra.stack_diff import diff_stacks

    original = project.stack_file.read_text()
    _edit(project.stack_file)
    try:
        _, old, _ = render_objects(str(stack_path(project.stack)))
        _, new, _ = render_objects(str(project.stack_file))
        ours = {c.key: {"patch": "create", "unpatch": "delete"}.get(c.action, c.action)
                for c in diff_stacks(old, new).changes}
        theirs = _preview_changes(ok(pulumi(project, "preview", "--diff", "--json")))
    finally:
        project.stack_file.write_text(original)
    assert ours, "the edit changed nothing: the comparison would prove nothing"
    assert theirs == ours


def test_destroy_leaves_the_cluster_as_the_bootstrap_left_it(project: Project,
                                                             control_plane: ControlPlane) -> None:
    ok(pulumi(project, "destroy", "--yes", "--skip-preview"))
    after = snapshot(control_plane, project.manifests)
    changed = {k: (project.bootstrap.get(k), after.get(k)) for k in set(project.bootstrap) | set(after)
               if project.bootstrap.get(k) != after.get(k)}
    assert changed == {}
