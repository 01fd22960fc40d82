"""What must exist in a cluster before the datacenter stack: CRDs at the versions we render, the
namespaces and the operator's Secrets in them. Plain logic over what a cluster serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flyte_agent.fleet_program import fleet_program
from flyte_agent.provisioner import Provision
from flyte_agent.settings import Settings
from infra.config import StackConfig, load_stack_config, stack_path
from infra.connector_config import ServiceMonitor
from infra.datacenter import program
from infra.gpu_pool import KARPENTER_API, KUEUE_API
from infra.prerequisites import (
    TRAINING_OPERATOR_API,
    PrerequisiteError,
    api_client,
    missing,
    required_crds,
    required_namespaces,
    required_secrets,
)
from infra.render import Rendered
from infra.spec import DataServiceSpec

LVA1 = load_stack_config(stack_path("lva1"))
LTX1 = load_stack_config(stack_path("ltx1"))


def _served(config: StackConfig = LVA1) -> dict[str, list[str]]:
    return {crd.name: [crd.version] for crd in required_crds(config)}


def _secrets(config: StackConfig = LVA1) -> dict[tuple[str, str], list[str]]:
    """A cluster holding every required Secret with the keys read (and one more, as operators add)."""
    return {(s.namespace, s.name): [*s.keys, "unrelated"] for s in required_secrets(config)}


def test_a_ready_cluster_passes() -> None:
    for config in (LVA1, LTX1):
        assert missing(config, _served(config), required_namespaces(config), _secrets(config)) == []


def test_the_crds_follow_what_the_stack_renders() -> None:
    names = {crd.name: crd.version for crd in required_crds(LVA1)}
    assert names == {"resourceflavors.kueue.x-k8s.io": KUEUE_API.split("/")[1],
                     "clusterqueues.kueue.x-k8s.io": "v1beta1", "localqueues.kueue.x-k8s.io": "v1beta1",
                     "nodepools.karpenter.sh": KARPENTER_API.split("/")[1],
                     "pytorchjobs.kubeflow.org": TRAINING_OPERATOR_API.split("/")[1]}
    # ltx1's pools are static: no Karpenter needed there.
    assert "nodepools.karpenter.sh" not in {crd.name for crd in required_crds(LTX1)}
    # A ServiceMonitor in the stack config needs the Prometheus operator's CRD.
    assert "servicemonitors.monitoring.coreos.com" not in names
    monitored = LVA1.model_copy(update={"connector": LVA1.connector.model_copy(
        update={"service_monitor": ServiceMonitor()})})
    assert {crd.name: crd.version for crd in required_crds(monitored)}[
        "servicemonitors.monitoring.coreos.com"] == "v1"


def test_missing_crds_wrong_versions_and_namespaces_are_each_named() -> None:
    served = _served()
    del served["nodepools.karpenter.sh"]
    served["clusterqueues.kueue.x-k8s.io"] = ["v1alpha1"]
    namespaces = [n for n in required_namespaces(LVA1) if n != "graphfleet-system"]
    problems = missing(LVA1, served, namespaces, _secrets())
    assert problems == [
        "CRD clusterqueues.kueue.x-k8s.io serves ['v1alpha1'], not v1beta1, which graphfleet renders: "
        "install a version of Kueue (kubernetes-sigs/kueue) that serves it",
        "CRD nodepools.karpenter.sh is not installed: install Karpenter (kubernetes-sigs/karpenter) serving "
        "karpenter.sh/v1",
        "namespace graphfleet-system does not exist: create it (and the Secrets the stack names) before the "
        "first `up` (docs/design.md, 'What the datacenter stack owns')",
    ]


def _kubeconfig(path: Path, context: str, server: str) -> str:
    """A kubeconfig file at `path` with one context, `context`, for the cluster at `server`."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": context, "user": {"token": "t"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}]}))
    return str(path)


def test_the_context_is_found_in_any_file_kubeconfig_lists(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """$KUBECONFIG is a path list that kubectl and the Pulumi provider merge; a context defined in its
    second file must be found (reading only the first named a context 'not found')."""
    first = _kubeconfig(tmp_path / "other", "other", "https://127.0.0.1:1")
    second = _kubeconfig(tmp_path / "ltx1", "ltx1-admin", "https://127.0.0.1:2")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    assert api_client("ltx1-admin").configuration.host == "https://127.0.0.1:2"


def test_a_context_in_no_kubeconfig_file_names_the_stack_key_the_files_and_the_contexts_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubernetes client's own error ("Invalid kube-config file. Expected object with name
    ltx1-admin in .../contexts list") names neither `kubernetes:context` nor the fix."""
    first = _kubeconfig(tmp_path / "first", "lva1-eks", "https://127.0.0.1:1")
    second = _kubeconfig(tmp_path / "second", "kind-dev", "https://127.0.0.1:2")
    absent = tmp_path / "absent"
    monkeypatch.setenv("KUBECONFIG", f"{first}:{absent}:{second}")
    with pytest.raises(PrerequisiteError) as refused:
        api_client("ltx1-admin")
    assert str(refused.value) == (
        f"kubernetes:context 'ltx1-admin' is not a context of the kubeconfig ($KUBECONFIG: {first}, "
        f"{absent} (no such file), {second}); its contexts: lva1-eks, kind-dev. Set kubernetes:context in "
        "the stack file to this datacenter's context, or add 'ltx1-admin' to the kubeconfig")
    # Without $KUBECONFIG the default file is read, as by the provider and kubectl.
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(PrerequisiteError) as refused:
        api_client("ltx1-admin")
    assert str(refused.value) == (
        "kubernetes:context 'ltx1-admin' is not a context of the kubeconfig (the default, $KUBECONFIG "
        f"being unset: {tmp_path}/.kube/config (no such file)); its contexts: none. Set kubernetes:context "
        "in the stack file to this datacenter's context, or add 'ltx1-admin' to the kubeconfig")


def _pod_specs(value: Any) -> Iterator[dict[str, Any]]:
    """Every pod spec inside a manifest (a Deployment's, a StatefulSet's, a job's replica template)."""
    if isinstance(value, dict):
        if "containers" in value:
            yield value
        else:
            for item in value.values():
                yield from _pod_specs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _pod_specs(item)


def _secret_refs(pod: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, list[str]]]:
    """(reference, the Secret's name, data keys named) of every Secret reference in a pod spec:
    imagePullSecrets, secretKeyRef, envFrom secretRef, secret and projected volumes."""
    for pull in pod.get("imagePullSecrets", []):
        yield pull, pull["name"], []
    for container in [*pod["containers"], *pod.get("initContainers", [])]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                yield ref, ref["name"], [ref["key"]]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"], source["secretRef"]["name"], []
    for volume in pod.get("volumes", []):
        for source in [volume, *volume.get("projected", {}).get("sources", [])]:
            if "secret" in source:
                secret = source["secret"]
                keys = [item["key"] for item in secret.get("items", [])]
                yield secret, secret.get("secretName") or secret["name"], keys


def _referenced_secrets(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, Secret) -> data keys named, of every non-optional Secret the objects' pods reference,
    minus the Secrets the objects create themselves. Keys only where named: envFrom and a whole mount
    need the Secret only."""
    found: dict[tuple[str, str], set[str]] = {}
    for manifest in manifests:
        namespace = manifest["metadata"].get("namespace")
        for pod in _pod_specs(manifest.get("spec", {})):
            for ref, name, keys in _secret_refs(pod):
                if not ref.get("optional"):
                    found.setdefault((namespace, name), set()).update(keys)
    created = {(m["metadata"].get("namespace"), m["metadata"]["name"])
               for m in manifests if m["kind"] == "Secret"}
    return {ref: keys for ref, keys in found.items() if ref not in created}


def _rendered_secrets(config: StackConfig, render_valid: Callable[..., Rendered]
                      ) -> dict[tuple[str, str], set[str]]:
    """The Secrets the stack's rendered objects reference, and those of the ephemeral fleets its
    connector creates (rendered from the settings its Deployment gives it, as a replica reads them)."""
    stack = render_valid(lambda: program(config), stack=config.datacenter.name)
    container = stack.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    settings = Settings.from_env({e["name"]: e["value"] for e in container["env"] if "value" in e})
    provision = Provision(name="run-p-n0", spec=DataServiceSpec(graph_uri="s3://graphs/cora", partitions=2),
                          owner="proj/dev", execution="p", created_at=time.time())
    fleet = render_valid(fleet_program(provision, settings), stack="run-p-n0", project="graphfleet-fleets")
    return _referenced_secrets([*stack.manifests(), *fleet.manifests()])


@pytest.mark.parametrize("config", [LTX1, LVA1], ids=["ltx1", "lva1"])
def test_the_required_secrets_are_exactly_those_the_rendered_objects_reference(
        config: StackConfig, render_valid: Callable[..., Rendered]) -> None:
    expected = _rendered_secrets(config, render_valid)
    assert {(s.namespace, s.name): set(s.keys) for s in required_secrets(config)} == expected
    # Not vacuous: the trial's Secret (a non-optional envFrom) and the mounted object-store credentials.
    if config is LTX1:
        assert expected[("graphfleet-system", "graphfleet-minio-credentials")] == set()
        assert {ns for ns, name in expected if name == "graphfleet-object-store"} == {
            "graphfleet-system", "graphfleet-data", "graphfleet-shared"}


def test_a_tls_secret_needs_the_keys_the_connector_reads_and_shared_credentials_need_shared_services(
        render_valid: Callable[..., Rendered]) -> None:
    """The TLS Secret is mounted whole, so no manifest names its keys; the connector reads tls.crt and
    tls.key from it (flyte_agent/grpc_server.py). Without shared services nothing in sharedServices
    mounts the object-store credentials."""
    config = LTX1.model_copy(update={"shared_services": [], "connector": LTX1.connector.model_copy(
        update={"tls_secret": "graphfleet-connector-tls"})})
    required = {(s.namespace, s.name): set(s.keys) for s in required_secrets(config)}
    assert set(required) == set(_rendered_secrets(config, render_valid))
    assert required[("graphfleet-system", "graphfleet-connector-tls")] == {"tls.crt", "tls.key"}
    assert ("graphfleet-shared", "graphfleet-object-store") not in required


def test_a_missing_secret_and_a_missing_key_are_each_named() -> None:
    secrets = _secrets(LTX1)
    del secrets[("graphfleet-system", "graphfleet-minio-credentials")]
    secrets[("graphfleet-system", "graphfleet-pulumi-backend")] = ["url"]
    del secrets[("graphfleet-data", "graphfleet-object-store")]
    problems = missing(LTX1, _served(LTX1), required_namespaces(LTX1), secrets)
    fix = "before the first `up` (docs/design.md, 'What the datacenter stack owns')"
    assert problems == [
        "Secret graphfleet-pulumi-backend in namespace graphfleet-system has no key passphrase "
        f"(named by graphfleet:connector.secrets.passphrase): add it {fix}",
        "Secret graphfleet-minio-credentials does not exist in namespace graphfleet-system "
        f"(named by graphfleet:connector.secrets.awsCredentials): create it {fix}",
        "Secret graphfleet-object-store does not exist in namespace graphfleet-data "
        f"(named by graphfleet:objectStore.credentials): create it with key credentials {fix}",
    ]
