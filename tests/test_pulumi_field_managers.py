"""Field managers when a create finds its object: the fake CLI (tests/fake_pulumi.py) against the real
engine (the CLI and pulumi-kubernetes from `make tools`, on the control-plane fixture).

Two stacks, each with its own kubernetes provider that upserts, declare the same objects: the second
`up` applies them under field managers of its own (pulumi-kubernetes provider.go fieldManagerName,
v4.32.0). Each case runs the same Automation API inline program with each CLI; the fake ignores the
cluster (its state backend keeps the objects), the real one creates them in a namespace of the control plane.
A Deployment of 0 replicas is done at once (its await needs no pod), a headless Service needs no
endpoints, a PriorityClass has no await.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from pulumi import automation as auto

from tests import fake_pulumi
from tests.control_plane import REPO, ControlPlane
from tests.pulumi_engine import engine_env, needs_engine

pytestmark = pytest.mark.integration

PROJECT = "graphfleet-fleets"
NAME = "twice"
FIELD_PATH = "metadata.name"
SHORT_FIELD_REF = {"fieldPath": FIELD_PATH}
STORED_FIELD_REF = {"apiVersion": "v1", "fieldPath": FIELD_PATH}  # as the apiserver defaults it
ENV_PATH = '.spec.template.spec.containers[name="app"].env[name="{}"].valueFrom.fieldRef'
# kind -> (the provider's type token, the REST API version, plural)
KINDS = {"Deployment": ("kubernetes:apps/v1:Deployment", "apps/v1", "deployments"),
         "Service": ("kubernetes:core/v1:Service", "v1", "services"),
         "PriorityClass": ("kubernetes:scheduling.k8s.io/v1:PriorityClass", "scheduling.k8s.io/v1",
                           "priorityclasses")}


@dataclass
class Engine:
    kind: str                 # "fake" or "real"
    root: Path                # PulumiCommand(root=...): the CLI is root/bin/pulumi
    env: dict[str, str]
    kubeconfig: str
    namespace: str            # also the PriorityClass's name: cluster-wide, one per test
    cp: ControlPlane | None   # the real side's cluster

    def stack(self, name: str, program: auto.PulumiFn) -> auto.Stack:
        return auto.create_stack(name, PROJECT, program, opts=auto.LocalWorkspaceOptions(
            env_vars=self.env, pulumi_command=auto.PulumiCommand(root=str(self.root)),
            project_settings=auto.ProjectSettings(name=PROJECT, runtime="python")))

    def stored(self, kind: str) -> dict[str, Any]:
        """The test's object of `kind` as the cluster keeps it (the fake: its record)."""
        token, api, plural = KINDS[kind]
        scoped = f"{self.namespace}/{NAME}" if kind != "PriorityClass" else self.namespace
        if self.cp is None:
            record: dict[str, Any] = fake_pulumi.cluster(self.env["PULUMI_BACKEND_URL"])[f"{token}:{scoped}"]
            return record
        base = "/api/v1" if api == "v1" else f"/apis/{api}"
        namespace, _, name = scoped.rpartition("/")
        live: dict[str, Any] = self.cp.get(
            f"{base}/namespaces/{namespace}/{plural}/{name}" if namespace else f"{base}/{plural}/{name}")
        return live

    def field_ref_owners(self) -> list[str]:
        """The field managers that own the Deployment's env fieldRef."""
        stored = self.stored("Deployment")
        if self.cp is None:
            return [stored["manager"]]
        return [entry["manager"] for entry in stored["metadata"]["managedFields"]
                if '"f:fieldRef"' in json.dumps(entry.get("fieldsV1", {}))]


@pytest.fixture(params=["fake", pytest.param("real", marks=needs_engine())])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    namespace = f"managers-{abs(hash(request.node.name)) % 10**6}"
    if request.param == "fake":
        root = tmp_path / "fake"
        (root / "bin").mkdir(parents=True)
        fake_pulumi.install(root / "bin")
        (tmp_path / "backend").mkdir()
        env = {"PULUMI_BACKEND_URL": f"file://{tmp_path / 'backend'}", "PULUMI_CONFIG_PASSPHRASE": "test",
               "PULUMI_HOME": str(tmp_path / "pulumi-home"), "PULUMI_SKIP_UPDATE_CHECK": "true"}
        yield Engine("fake", root, env, str(tmp_path / "unused-kubeconfig"), namespace, None)
        return
    cp: ControlPlane = request.getfixturevalue("control_plane")
    made = cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    assert made.status_code in (200, 201), made.text
    env = engine_env(tmp_path / "pulumi-home", tmp_path / "backend", cp.kubeconfig)
    yield Engine("real", REPO / ".tools", env, str(cp.kubeconfig), namespace, cp)
    cp.request("DELETE", f"/api/v1/namespaces/{namespace}")


def program(engine: Engine, *, field_ref: dict[str, str], env_names: tuple[str, ...] = ("POD_NAME",),
            upsert: bool = True, force: bool = False, annotations: dict[str, str] | None = None,
            falses: bool = False) -> auto.PulumiFn:
    """A Deployment whose container's env vars take `field_ref`, on an explicit provider; with `falses`
    also a headless Service and a PriorityClass rendering their omitempty booleans `false`."""
    def run() -> None:
        provider = k8s.Provider("k8s", kubeconfig=engine.kubeconfig, upsert_existing_objects=upsert,
                                enable_patch_force=force)
        opts = pulumi.ResourceOptions(provider=provider)
        labels = {"app": NAME}
        metadata = {"name": NAME, "namespace": engine.namespace}
        container = {"name": "app", "image": "registry.k8s.io/pause:3.10",
                     "env": [{"name": name, "valueFrom": {"fieldRef": field_ref}} for name in env_names]}
        # Manifests as infra/graph_service.py passes them (dicts, not the SDK's typed args).
        deployment: dict[str, Any] = {
            "metadata": {**metadata, "annotations": annotations or {}},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}}
        k8s.apps.v1.Deployment("app", opts=opts, metadata=deployment["metadata"], spec=deployment["spec"])
        if falses:
            service: dict[str, Any] = {"metadata": metadata, "spec": {
                "clusterIP": "None", "selector": labels, "publishNotReadyAddresses": False,
                "ports": [{"name": "grpc", "port": 50051}]}}
            k8s.core.v1.Service("svc", opts=opts, metadata=service["metadata"], spec=service["spec"])
            k8s.scheduling.v1.PriorityClass("pc", opts=opts, metadata={"name": engine.namespace}, value=10,
                                            global_default=False)

    return run


@pytest.fixture
def stacks(engine: Engine) -> Iterator[dict[str, auto.Stack]]:
    """Filled by the test; every stack made is destroyed at the end, the second first."""
    made: dict[str, auto.Stack] = {}
    yield made
    for stack in reversed(made.values()):
        stack.destroy()


@pytest.mark.parametrize("first_upserts, env_names", [(True, ("POD_NAME",)), (False, ("POD_NAME",)),
                                                      (True, ("NODE_NAME", "POD_NAME"))],
                         ids=["first-applied", "first-posted", "two-fields"])
def test_a_second_manager_conflicts_on_a_short_field_ref(
        engine: Engine, stacks: dict[str, auto.Stack], first_upserts: bool, env_names: tuple[str, ...],
) -> None:
    """The first stack's object stores fieldRef defaulted (`apiVersion: v1`); the second's short one
    differs from it, and fieldRef is atomic: a conflict with the first's manager, without force."""
    stacks["first"] = engine.stack("first", program(engine, field_ref=SHORT_FIELD_REF, env_names=env_names,
                                                    upsert=first_upserts))
    stacks["first"].up()
    [first_manager] = engine.field_ref_owners()
    stacks["second"] = engine.stack("second", program(engine, field_ref=SHORT_FIELD_REF, env_names=env_names))
    with pytest.raises(auto.CommandError) as failed:
        stacks["second"].up()
    message = str(failed.value)
    assert ('resource "urn:pulumi:second::graphfleet-fleets::kubernetes:apps/v1:Deployment::app" was not '
            "successfully created by the Kubernetes API server: server-side apply field conflict detected, "
            "see https://www.pulumi.com/registry/packages/kubernetes/how-to-guides/") in message, message
    assert 'The resource managed by field manager "pulumi-kubernetes-' in message, message
    # An upsert applies under `pulumi-kubernetes-<8 hex>`; a plain create POSTs under `pulumi-kubernetes`,
    # an Update operation, which the apiserver names with its API version.
    if first_upserts:
        assert first_manager.startswith("pulumi-kubernetes-") and len(first_manager) == 26, first_manager
        owner = f'"{first_manager}"'
    else:
        assert first_manager == "pulumi-kubernetes", first_manager
        owner = '"pulumi-kubernetes" using apps/v1'
    paths = [ENV_PATH.format(name) for name in env_names]
    if len(paths) == 1:
        assert f"had an apply conflict: Apply failed with 1 conflict: conflict with {owner}: {paths[0]}" \
            in message, message
    else:
        assert f"had an apply conflict: Apply failed with 2 conflicts: conflicts with {owner}:" in message
        assert all(f"- {path}" in message for path in paths), message
    assert engine.field_ref_owners() == [first_manager]


def test_omitempty_falses_never_reach_the_apiserver(engine: Engine, stacks: dict[str, auto.Stack]) -> None:
    """pulumi-kubernetes' Check round-trips the inputs through the kind's Go type, which drops an omitempty
    `false`: it is neither applied nor stored, so a second manager rendering it again meets no conflict
    (a raw server-side apply of it would: the first manager would own the field)."""
    for name in ("first", "second"):
        stacks[name] = engine.stack(name, program(engine, field_ref=STORED_FIELD_REF, falses=True))
        stacks[name].up()
    service, priority_class = engine.stored("Service"), engine.stored("PriorityClass")
    if engine.cp is None:
        service, priority_class = service["manifest"], priority_class["manifest"]
    else:
        owned = json.dumps([entry["fieldsV1"] for entry in service["metadata"]["managedFields"]])
        assert '"f:clusterIP"' in owned and '"f:publishNotReadyAddresses"' not in owned, owned
    assert "publishNotReadyAddresses" not in service["spec"] and "globalDefault" not in priority_class


@pytest.mark.parametrize("second", ["stored-field-ref", "provider-force", "annotation-force"])
def test_the_stored_form_or_force_applies_over_the_first_manager(
        engine: Engine, stacks: dict[str, auto.Stack], second: str) -> None:
    field_ref = STORED_FIELD_REF if second == "stored-field-ref" else SHORT_FIELD_REF
    stacks["first"] = engine.stack("first", program(engine, field_ref=field_ref))
    stacks["first"].up()
    [first_manager] = engine.field_ref_owners()
    stacks["second"] = engine.stack("second", program(
        engine, field_ref=field_ref, force=second == "provider-force",
        annotations={"pulumi.com/patchForce": "true"} if second == "annotation-force" else None))
    stacks["second"].up()
    if second != "stored-field-ref":
        # Force moves the conflicting field to the second's manager (with equal values the real
        # apiserver shares it between both, the fake keeps one manager: not compared).
        [owner] = engine.field_ref_owners()
        assert owner != first_manager and owner.startswith("pulumi-kubernetes-"), owner
