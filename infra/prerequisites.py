"""What must exist in a cluster before `pulumi up -s <datacenter>`, checked with a clear message.

The datacenter stack does not own these (docs/design.md, "What the datacenter stack owns"): the
CRDs of Kueue, Karpenter and the Kubeflow training operator at the API versions we render, the
namespaces, and the Secrets in them that the stack's pods (and its connector's fleets) read, with the
keys they read. Without this check the first `up` fails half-way with the provider's "no matches for
kind" or "namespace not found", or waits out its timeout for a connector whose pods cannot start.

`missing()` is plain logic over what the cluster serves; `read_cluster()` asks the API server
(the stack's own kubeconfig context) and is the only part that needs a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.config import StackConfig
from infra.config_fields import NAMESPACE, camel
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


@dataclass(frozen=True)
class RequiredSecret:
    """A Secret the stack's pods read and the stack does not create."""

    namespace: str
    name: str
    keys: Mapping[str, str]    # data key read -> the stack-file key naming it; empty: any keys (envFrom)
    named_by: tuple[str, ...]  # the stack-file keys naming it, e.g. graphfleet:connector.secrets.passphrase


# A kubernetes.io/tls Secret's keys (core/v1 TLSCertKey, TLSPrivateKeyKey): mounted whole, so no manifest
# names them, but the connector reads both (flyte_agent/grpc_server.py).
TLS_KEYS = ("tls.crt", "tls.key")


def _setting(config: StackConfig, *path: str) -> tuple[Any, str]:
    """The config value at `path` and its key as the stack file spells it: one path for both."""
    value: Any = config
    for part in path:
        value = getattr(value, part)
    return value, f"{NAMESPACE}:" + ".".join(camel(part) for part in path)


def required_secrets(config: StackConfig) -> list[RequiredSecret]:
    """Every Secret the stack's objects reference, from the config fields the components read: the
    connector's (infra/connector_deployment.py) and the object-store credentials where pods mount them
    (infra/object_store.py). The stack creates no Secret, so all of them exist before it."""
    ns = config.namespaces
    uses: list[tuple[str, str, tuple[str, ...], str]] = []  # (namespace, Secret, keys read, stack key)
    for field in ("backend_url", "passphrase"):  # a secretKeyRef; a mounted item
        ref, key = _setting(config, "connector", "secrets", field)
        if ref is not None:
            uses.append((ns.connector, ref.name, (ref.key,), key))
    aws, key = _setting(config, "connector", "secrets", "aws_credentials")
    if aws is not None:  # envFrom, not optional: the Secret must exist, whatever keys it holds
        uses.append((ns.connector, aws, (), key))
    tls, key = _setting(config, "connector", "tls_secret")
    if tls is not None:
        uses.append((ns.connector, tls, TLS_KEYS, key))
    store, key = _setting(config, "object_store", "credentials")
    if store is not None:
        # Mounted by the connector, by its ephemeral fleets (dataServices, `flyte_agent.pulumi_provisioner.
        # fleet_args`) and by the shared services' servers, when there are any.
        readers = [ns.connector, ns.data_services] + ([ns.shared_services] if config.shared_services else [])
        uses += [(namespace, store.name, (store.key,), key) for namespace in readers]
    merged: dict[tuple[str, str], RequiredSecret] = {}
    for namespace, name, keys, stack_key in uses:
        seen = merged.get((namespace, name), RequiredSecret(namespace, name, {}, ()))
        merged[(namespace, name)] = RequiredSecret(
            namespace, name, {**seen.keys, **dict.fromkeys(keys, stack_key)},
            tuple(dict.fromkeys([*seen.named_by, stack_key])))
    return list(merged.values())


def required_namespaces(config: StackConfig) -> list[str]:
    return list(dict.fromkeys([*config.stack_namespaces(), *config.team_namespaces()]))


def missing(config: StackConfig, served: Mapping[str, Iterable[str]], namespaces: Iterable[str],
            secrets: Mapping[tuple[str, str], Iterable[str]]) -> list[str]:
    """One line per missing prerequisite. `served`: CRD name -> versions it serves; `secrets`:
    (namespace, name) -> data key names, of the Secrets that exist."""
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
    fix = "before the first `up` (docs/design.md, 'What the datacenter stack owns')"
    for secret in required_secrets(config):
        where = (secret.namespace, secret.name)
        if where not in secrets:
            keys = f" with key{'s' if len(secret.keys) > 1 else ''} {', '.join(secret.keys)}" \
                if secret.keys else ""
            problems.append(f"Secret {secret.name} does not exist in namespace {secret.namespace} (named by "
                            f"{', '.join(secret.named_by)}): create it{keys} {fix}")
            continue
        held = set(secrets[where])
        problems += [f"Secret {secret.name} in namespace {secret.namespace} has no key {key} (named by "
                     f"{stack_key}): add it {fix}"
                     for key, stack_key in secret.keys.items() if key not in held]
    return problems


def api_client(context: str, kubeconfig: str | None = None) -> Any:
    """A client for kubeconfig `context`, found as the Pulumi provider finds it: in `kubeconfig`, else
    in the merge of every file $KUBECONFIG lists, else ~/.kube/config. The kubernetes client's
    KubeConfigMerger splits a path list itself (kubernetes/config/kube_config.py, 37.0.1), so the
    whole list is passed, not its first file. A context in none of them raises PrerequisiteError
    naming the files searched and the contexts they define (the client's own error, "Invalid kube-config
    file. Expected object with name ...", names neither the stack key nor the fix)."""
    import os

    from kubernetes import config
    from kubernetes.config.kube_config import KubeConfigMerger

    paths, source = ((kubeconfig, "given") if kubeconfig else
                     (os.environ["KUBECONFIG"], "$KUBECONFIG") if os.environ.get("KUBECONFIG") else
                     ("~/.kube/config", "the default, $KUBECONFIG being unset"))
    merged = KubeConfigMerger(paths)
    contexts = [str(c["name"]) for c in merged.config["contexts"]] if merged.config is not None else []
    if context not in contexts:
        searched = [os.path.expanduser(p) for p in paths.split(os.pathsep) if p]
        # merged.paths: the files that exist (the merger skips the others).
        files = ", ".join(p if p in merged.paths else f"{p} (no such file)" for p in searched)
        raise PrerequisiteError(
            f"kubernetes:context {context!r} is not a context of the kubeconfig ({source}: {files}); its "
            f"contexts: {', '.join(contexts) or 'none'}. Set kubernetes:context in the stack file to this "
            f"datacenter's context, or add {context!r} to the kubeconfig")
    return config.new_client_from_config(config_file=paths, context=context)


def read_cluster(context: str, kubeconfig: str | None = None, secrets: Iterable[tuple[str, str]] = ()
                 ) -> tuple[dict[str, list[str]], list[str], dict[tuple[str, str], list[str]]]:
    """(CRD name -> served versions, namespace names, (namespace, Secret) -> data key names of those
    of `secrets` that exist) of the cluster behind kubeconfig `context` (in `kubeconfig`, else
    $KUBECONFIG or ~/.kube/config, as the Pulumi provider reads it)."""
    from kubernetes import client  # imported here: only a real `up` talks to a cluster
    from kubernetes.client.exceptions import ApiException

    api = api_client(context, kubeconfig)
    crds = client.ApiextensionsV1Api(api).list_custom_resource_definition()
    served = {str(c.metadata.name): [str(v.name) for v in c.spec.versions if v.served]  # type: ignore[union-attr]
              for c in crds.items}
    core = client.CoreV1Api(api)
    namespaces = [str(n.metadata.name) for n in core.list_namespace().items]  # type: ignore[union-attr]
    found: dict[tuple[str, str], list[str]] = {}
    # Each named Secret by itself (get, not list: no other Secret is read); only its key names are kept.
    for namespace, name in secrets:
        if namespace not in namespaces:
            continue
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            continue
        found[(namespace, name)] = sorted(secret.data or {})  # type: ignore[union-attr]
    return served, namespaces, found


def check(config: StackConfig, kubeconfig: str | None = None) -> None:
    """Raise PrerequisiteError naming everything the cluster of `kubernetes:context` lacks."""
    wanted = [(s.namespace, s.name) for s in required_secrets(config)]
    served, namespaces, secrets = read_cluster(config.kubernetes_context, kubeconfig, wanted)
    problems = missing(config, served, namespaces, secrets)
    if problems:
        raise PrerequisiteError(f"cluster of kubernetes:context {config.kubernetes_context!r} is not ready "
                                f"for stack {config.datacenter.name}:\n  " + "\n  ".join(problems))
