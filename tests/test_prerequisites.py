"""What must exist in a cluster before the datacenter stack: CRDs at the versions we render, and the
namespaces (held by the operator's Secrets). Plain logic over what a cluster serves."""

from __future__ import annotations

from infra.config import ServiceMonitor, load_stack_config, stack_path
from infra.gpu_pool import KARPENTER_API, KUEUE_API
from infra.prerequisites import TRAINING_OPERATOR_API, missing, required_crds, required_namespaces

LVA1 = load_stack_config(stack_path("lva1"))
LTX1 = load_stack_config(stack_path("ltx1"))


def _served(config=LVA1) -> dict[str, list[str]]:
    return {crd.name: [crd.version] for crd in required_crds(config)}


def test_a_ready_cluster_passes() -> None:
    assert missing(LVA1, _served(), required_namespaces(LVA1)) == []


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
    problems = missing(LVA1, served, namespaces)
    assert problems == [
        "CRD clusterqueues.kueue.x-k8s.io serves ['v1alpha1'], not v1beta1, which graphfleet renders: "
        "install a version of Kueue (kubernetes-sigs/kueue) that serves it",
        "CRD nodepools.karpenter.sh is not installed: install Karpenter (kubernetes-sigs/karpenter) serving "
        "karpenter.sh/v1",
        "namespace graphfleet-system does not exist: create it (and the Secrets the stack names) before the "
        "first `up` (docs/design.md, 'What the datacenter stack owns')",
    ]


def test_the_context_is_found_in_any_file_kubeconfig_lists(tmp_path, monkeypatch) -> None:
    """$KUBECONFIG is a path list that kubectl and the Pulumi provider merge; a context defined in its
    second file must be found (reading only the first named a context 'not found')."""
    import yaml

    from infra.prerequisites import api_client

    def kubeconfig(name: str, server: str):
        path = tmp_path / name
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server}}],
            "users": [{"name": name, "user": {"token": "t"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}))
        return str(path)

    first = kubeconfig("other", "https://127.0.0.1:1")
    second = kubeconfig("ltx1-admin", "https://127.0.0.1:2")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    assert api_client("ltx1-admin").configuration.host == "https://127.0.0.1:2"
