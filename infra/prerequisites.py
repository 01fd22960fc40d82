"""What must exist in a cluster before `pulumi up -s <datacenter>`, checked with a clear message.

The datacenter stack does not own these (docs/design.md, "What the datacenter stack owns"): the
CRDs of Kueue, Karpenter and the Kubeflow training operator at the API versions we render, and the
namespaces (they hold the Secrets the operator creates before the first `up`). Without this check
the first `up` fails half-way with the provider's "no matches for kind" or "namespace not found".

`missing()` is plain logic over what the cluster serves; `read_cluster()` asks the API server
(the stack's own kubeconfig context) and is the only part that needs a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.config import StackConfig
from infra.connector_deployment import SERVICE_MONITOR_API
from infra.gpu_pool import KARPENTER_API, KUEUE_API

# The training operator's PyTorchJob (flytekitplugins-kfpytorch renders kubeflow.org/v1).
TRAINING_OPERATOR_API = "kubeflow.org/v1"


class PrerequisiteError(RuntimeError):
    """The cluster lacks something the stack needs; the message lists all of it and the fix."""


@dataclass(frozen=True)
class Crd:
    name: str          # plural.group, the CRD object's name
    version: str       # the API version we render for
    installs: str      # what provides it

    @property
    def group(self) -> str:
        return self.name.split(".", 1)[1]


def _version(api: str) -> str:
    return api.rsplit("/", 1)[1]


def required_crds(config: StackConfig) -> list[Crd]:
    """The CRDs the stack's objects (and its training jobs) need, at the versions we render."""
    crds = []
    if config.connector.service_monitor is not None:
        crds.append(Crd("servicemonitors.monitoring.coreos.com", _version(SERVICE_MONITOR_API),
                        "the Prometheus operator (prometheus-operator/prometheus-operator)"))
    if not config.gpu_pools:
        return crds
    kueue = "Kueue (kubernetes-sigs/kueue)"
    crds += [Crd(f"{plural}.kueue.x-k8s.io", _version(KUEUE_API), kueue)
             for plural in ("resourceflavors", "clusterqueues", "localqueues")]
    if any(pool.kind == "karpenter" for pool in config.gpu_pools):
        crds.append(Crd("nodepools.karpenter.sh", _version(KARPENTER_API),
                        "Karpenter (kubernetes-sigs/karpenter)"))
    crds.append(Crd("pytorchjobs.kubeflow.org", _version(TRAINING_OPERATOR_API),
                    "the Kubeflow training operator (kubeflow/training-operator)"))
    return crds


def required_namespaces(config: StackConfig) -> list[str]:
    return list(dict.fromkeys([*config.stack_namespaces(), *config.team_namespaces()]))


def missing(config: StackConfig, served: Mapping[str, Iterable[str]], namespaces: Iterable[str]) -> list[str]:
    """One line per missing prerequisite. `served`: CRD name -> versions it serves."""
    problems = []
    for crd in required_crds(config):
        versions = set(served.get(crd.name, ()))
        if not versions:
            problems.append(f"CRD {crd.name} is not installed: install {crd.installs} serving {crd.group}/"
                            f"{crd.version}")
        elif crd.version not in versions:
            problems.append(f"CRD {crd.name} serves {sorted(versions)}, not {crd.version}, which graphfleet "
                            f"renders: install a version of {crd.installs} that serves it")
    present = set(namespaces)
    for namespace in required_namespaces(config):
        if namespace not in present:
            problems.append(f"namespace {namespace} does not exist: create it (and the Secrets the stack "
                            f"names) before the first `up` (docs/design.md, 'What the datacenter stack "
                            f"owns')")
    return problems


def api_client(context: str, kubeconfig: str | None = None) -> Any:
    """A client for kubeconfig `context`, found as the Pulumi provider finds it: in `kubeconfig`, else
    in the merge of every file $KUBECONFIG lists, else ~/.kube/config. The kubernetes client's
    KubeConfigMerger splits a path list itself (kubernetes/config/kube_config.py, 37.0.1), so the
    whole list is passed, not its first file."""
    import os

    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
                                         context=context)


def read_cluster(context: str, kubeconfig: str | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """(CRD name -> served versions, namespace names) of the cluster behind kubeconfig `context`
    (in `kubeconfig`, else $KUBECONFIG or ~/.kube/config, as the Pulumi provider reads it)."""
    from kubernetes import client  # imported here: only a real `up` talks to a cluster

    api = api_client(context, kubeconfig)
    crds = client.ApiextensionsV1Api(api).list_custom_resource_definition()
    served = {str(c.metadata.name): [str(v.name) for v in c.spec.versions if v.served]  # type: ignore[union-attr]
              for c in crds.items}
    namespaces = [str(n.metadata.name) for n in client.CoreV1Api(api).list_namespace().items]  # type: ignore[union-attr]
    return served, namespaces


def check(config: StackConfig, kubeconfig: str | None = None) -> None:
    """Raise PrerequisiteError naming everything the cluster of `kubernetes:context` lacks."""
    served, namespaces = read_cluster(config.kubernetes_context, kubeconfig)
    problems = missing(config, served, namespaces)
    if problems:
        raise PrerequisiteError(f"cluster of kubernetes:context {config.kubernetes_context!r} is not ready "
                                f"for stack {config.datacenter.name}:\n  " + "\n  ".join(problems))
