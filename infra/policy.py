"""The project's policy rules over rendered manifests: plain functions, one named violation per problem.

`check(manifests)` runs every rule. The rules read only the manifests, so they judge what would be
applied, whatever code produced it. (Pulumi's CrossGuard is not used: `pulumi_policy` pins a
protobuf that conflicts with flytekit's.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.config import GPU_RESOURCE, KUBELET_TAINTS, POOL_LABEL
from infra.contract import check_coverage
from infra.images import check_image

Manifest = Mapping[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
ALLOWLIST_ENV = "GRAPHFLEET_IMAGE_ALLOWLIST"
GRAPH_SERVER_MODULE = "graph_engine.server"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass(frozen=True)
class Violation:
    rule: str
    object: str      # Kind/namespace/name
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.object}: {self.message}"


def ref(manifest: Manifest) -> str:
    meta = manifest.get("metadata") or {}
    parts = [manifest.get("kind", "<no kind>"), meta.get("namespace"),
             meta.get("name") or "<no metadata.name>"]
    return "/".join(str(p) for p in parts if p)


def pod_spec(manifest: Manifest) -> Mapping[str, Any] | None:
    """The pod template's spec of a workload, the spec of a Pod, else None."""
    kind = manifest.get("kind")
    if kind == "Pod":
        return manifest.get("spec") or {}
    if kind == "CronJob":
        job = manifest.get("spec", {}).get("jobTemplate", {})
        return job.get("spec", {}).get("template", {}).get("spec", {})
    if kind in WORKLOAD_KINDS:
        return manifest.get("spec", {}).get("template", {}).get("spec", {})
    return None


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def rule_metadata_name(manifests: list[Manifest]) -> Iterable[Violation]:
    for m in manifests:
        if not (m.get("metadata") or {}).get("name"):
            yield Violation("metadata-name", ref(m), "no metadata.name: a retried create could not adopt it")


def rule_container_limits(manifests: list[Manifest]) -> Iterable[Violation]:
    for m in manifests:
        spec = pod_spec(m)
        for c in _containers(spec or {}):
            limits = (c.get("resources") or {}).get("limits") or {}
            missing = [r for r in ("cpu", "memory") if r not in limits]
            if missing:
                yield Violation("container-limits", ref(m),
                                f"container {c.get('name')!r} has no {' or '.join(missing)} limit")


def rule_restricted_security(manifests: list[Manifest]) -> Iterable[Violation]:
    """Pod Security Standard `restricted`, the level the namespaces enforce."""
    for m in manifests:
        spec = pod_spec(m)
        if spec is None:
            continue
        pod_ctx = spec.get("securityContext") or {}
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host):
                yield Violation("restricted-security", ref(m), f"{host} is not allowed")
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                yield Violation("restricted-security", ref(m), f"hostPath volume {volume.get('name')!r}")
        for c in _containers(spec):
            ctx = c.get("securityContext") or {}
            name = c.get("name")
            if ctx.get("privileged"):
                yield Violation("restricted-security", ref(m), f"container {name!r} is privileged")
            if ctx.get("allowPrivilegeEscalation") is not False:
                yield Violation("restricted-security", ref(m),
                                f"container {name!r} must set allowPrivilegeEscalation: false")
            if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
                yield Violation("restricted-security", ref(m),
                                f"container {name!r} must drop ALL capabilities")
            if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
                yield Violation("restricted-security", ref(m),
                                f"container {name!r} must set runAsNonRoot: true")
            seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                yield Violation("restricted-security", ref(m),
                                f"container {name!r} needs seccompProfile RuntimeDefault, got {seccomp!r}")


def rule_namespace_pod_security(manifests: list[Manifest]) -> Iterable[Violation]:
    for m in manifests:
        if m.get("kind") == "Namespace":
            labels = (m.get("metadata") or {}).get("labels") or {}
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                yield Violation("namespace-pod-security", ref(m),
                                "label pod-security.kubernetes.io/enforce must be 'restricted'")


def rule_rbac_scope(manifests: list[Manifest]) -> Iterable[Violation]:
    """Namespace-scoped, explicit verbs and resources, Secrets only by name."""
    for m in manifests:
        kind = m.get("kind")
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            yield Violation("rbac-scope", ref(m),
                            f"{kind} grants cluster-wide access; use a Role in the namespace")
        if kind == "RoleBinding" and (m.get("roleRef") or {}).get("kind") == "ClusterRole":
            yield Violation("rbac-scope", ref(m), "binds a ClusterRole; bind a namespace Role instead")
        if kind not in ("Role", "ClusterRole"):
            continue
        for index, rule in enumerate(m.get("rules") or []):
            for field in ("verbs", "resources", "apiGroups"):
                if "*" in (rule.get(field) or []):
                    yield Violation("rbac-scope", ref(m), f"rules[{index}].{field} has a wildcard '*'")
            if "secrets" in (rule.get("resources") or []) and not rule.get("resourceNames"):
                yield Violation("rbac-scope", ref(m),
                                f"rules[{index}] grants access to every Secret; name them in resourceNames")


def _pool_taints(manifests: list[Manifest]) -> dict[str, list[Mapping[str, Any]]]:
    """GPU pool name -> taints its nodes carry (from Node patches, with the taints their kubelet
    registers, and Karpenter NodePools)."""
    taints: dict[str, list[Mapping[str, Any]]] = {}
    for m in manifests:
        node_taints: list[Mapping[str, Any]]
        if m.get("kind") == "Node":
            labels = (m.get("metadata") or {}).get("labels") or {}
            annotations = (m.get("metadata") or {}).get("annotations") or {}
            node_taints = [*(m.get("spec") or {}).get("taints", []),
                           *map(_taint, filter(None, annotations.get(KUBELET_TAINTS, "").split(",")))]
        elif m.get("kind") == "NodePool" and str(m.get("apiVersion", "")).startswith("karpenter.sh/"):
            template = (m.get("spec") or {}).get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            node_taints = (template.get("spec") or {}).get("taints") or []
        else:
            continue
        if POOL_LABEL in labels:
            known = taints.setdefault(labels[POOL_LABEL], [])
            known.extend(t for t in node_taints if t not in known)
    return taints


def _taint(text: str) -> dict[str, str]:
    """`key=value:effect` (kubelet `--register-with-taints` syntax) -> a Taint."""
    key_value, _, effect = text.rpartition(":")
    key, _, value = key_value.partition("=")
    return {"key": key, "value": value, "effect": effect}


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' matching rule: same key (or empty key with Exists), value unless Exists, effect or any."""
    for t in tolerations:
        key_ok = t.get("key") == taint.get("key") or (not t.get("key") and t.get("operator") == "Exists")
        value_ok = t.get("operator") == "Exists" or t.get("value") == taint.get("value")
        effect_ok = not t.get("effect") or t.get("effect") == taint.get("effect")
        if key_ok and value_ok and effect_ok:
            return True
    return False


def rule_gpu_tolerations(manifests: list[Manifest]) -> Iterable[Violation]:
    """Kueue flavors and GPU pods tolerate the taints of the pool they target."""
    taints = _pool_taints(manifests)
    for m in manifests:
        if m.get("kind") == "ResourceFlavor":
            spec = m.get("spec") or {}
            pool = (spec.get("nodeLabels") or {}).get(POOL_LABEL)
            for taint in taints.get(pool, []) if pool else []:
                if not tolerates(spec.get("tolerations") or [], taint):
                    yield Violation("gpu-tolerations", ref(m), f"does not tolerate pool {pool!r}'s taint "
                                    f"{taint.get('key')}={taint.get('value')}:{taint.get('effect')}")
        spec = pod_spec(m)
        if spec is None or not any(GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {})
                                   for c in _containers(spec)):
            continue
        template = (m.get("spec") or {}).get("template", {})
        template_labels = (template.get("metadata") or {}).get("labels") or {}
        labels = {**((m.get("metadata") or {}).get("labels") or {}), **template_labels}
        if QUEUE_LABEL in labels:
            continue  # Kueue injects the flavor's node selector and tolerations on admission.
        pool = (spec.get("nodeSelector") or {}).get(POOL_LABEL)
        if pool is None:
            yield Violation("gpu-tolerations", ref(m), f"requests {GPU_RESOURCE} but selects no GPU pool "
                            f"({POOL_LABEL}) and has no Kueue queue label ({QUEUE_LABEL})")
            continue
        for taint in taints.get(pool, []):
            if not tolerates(spec.get("tolerations") or [], taint):
                yield Violation("gpu-tolerations", ref(m), f"runs on pool {pool!r} but does not tolerate "
                                f"{taint.get('key')}={taint.get('value')}:{taint.get('effect')}")


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command[:-1] else None


def graph_server_command(manifest: Manifest) -> list[str] | None:
    spec = pod_spec(manifest) or {}
    for c in spec.get("containers", []):
        command = [*(c.get("command") or []), *(c.get("args") or [])]
        if GRAPH_SERVER_MODULE in command:
            return [str(part) for part in command]
    return None


def rule_partition_coverage(manifests: list[Manifest]) -> Iterable[Violation]:
    """Each graph-engine StatefulSet serves every partition exactly once (read from its server args)."""
    for m in manifests:
        if m.get("kind") != "StatefulSet" or (command := graph_server_command(m)) is None:
            continue
        replicas, partitions = _flag(command, "--replicas"), _flag(command, "--partitions")
        if replicas is None or partitions is None or not (replicas.isdigit() and partitions.isdigit()):
            yield Violation("partition-coverage", ref(m), f"server args need --replicas and --partitions "
                            f"as numbers, got {replicas!r} and {partitions!r}")
            continue
        running = (m.get("spec") or {}).get("replicas")
        if int(replicas) != running:
            yield Violation("partition-coverage", ref(m), f"servers think there are {replicas} replicas but "
                            f"the StatefulSet runs {running}: partitions would be missed")
        try:
            check_coverage(int(replicas), int(partitions))
        except ValueError as exc:
            yield Violation("partition-coverage", ref(m), str(exc))


def rule_headless_service(manifests: list[Manifest]) -> Iterable[Violation]:
    services = {((s.get("metadata") or {}).get("namespace"), (s.get("metadata") or {}).get("name")): s
                for s in manifests if s.get("kind") == "Service"}
    for m in manifests:
        if m.get("kind") != "StatefulSet":
            continue
        name = (m.get("spec") or {}).get("serviceName")
        service = services.get(((m.get("metadata") or {}).get("namespace"), name))
        if service is None:
            yield Violation("headless-service", ref(m), f"serviceName {name!r} is not a Service in the stack")
        elif (service.get("spec") or {}).get("clusterIP") != "None":
            yield Violation("headless-service", ref(m), f"Service {name!r} must be headless "
                            f"(clusterIP: None) so each pod gets a stable DNS name")


def connector_allow_list(manifests: list[Manifest]) -> list[str] | None:
    """The graph-engine allow-list the connector Deployment is given, if the stack has one."""
    for m in manifests:
        for c in (pod_spec(m) or {}).get("containers", []) if m.get("kind") == "Deployment" else []:
            for env in c.get("env") or []:
                if env.get("name") == ALLOWLIST_ENV:
                    return [e for e in str(env.get("value", "")).split(",") if e]
    return None


def rule_image_allow_list(manifests: list[Manifest]) -> Iterable[Violation]:
    """Graph-engine servers run only images the connector would accept from a task."""
    allow = connector_allow_list(manifests)
    if allow is None:
        return
    for m in manifests:
        if m.get("kind") != "StatefulSet" or graph_server_command(m) is None:
            continue
        for c in (pod_spec(m) or {}).get("containers", []):
            try:
                check_image(str(c.get("image")), allow)
            except ValueError as exc:
                yield Violation("image-allow-list", ref(m), str(exc))


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector's matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist) on labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, values = expression.get("key"), expression.get("values") or []
        present = key in labels
        holds = {"In": present and labels.get(key) in values,
                 "NotIn": not present or labels.get(key) not in values,
                 "Exists": present, "DoesNotExist": not present}
        if not holds.get(expression.get("operator"), False):
            return False
    return True


def rule_network_policy_coverage(manifests: list[Manifest]) -> Iterable[Violation]:
    """Every pod the stack runs is selected by a NetworkPolicy in its namespace: a pod no policy
    selects accepts traffic from anywhere in the cluster."""
    policies = [m for m in manifests if m.get("kind") == "NetworkPolicy"]
    for m in manifests:
        if m.get("kind") not in WORKLOAD_KINDS:
            continue
        namespace = (m.get("metadata") or {}).get("namespace")
        labels = (((m.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not any((p.get("metadata") or {}).get("namespace") == namespace
                   and _selects((p.get("spec") or {}).get("podSelector") or {}, labels) for p in policies):
            yield Violation("network-policy-coverage", ref(m),
                            "no NetworkPolicy in its namespace selects its pods")


def rule_patch_atomic_list(manifests: list[Manifest]) -> Iterable[Violation]:
    """Nodes are never created by a stack, only patched: a patch must not set an atomic list."""
    from infra.k8s_schema import atomic_lists

    for m in manifests:
        if m.get("kind") == "Node":
            for path in atomic_lists(m):
                yield Violation("patch-atomic-list", ref(m), f"{path} is an atomic list: a patch would own "
                                f"all of it, fighting the kubelet and node controllers; leave it to them")


RULES: dict[str, Callable[[list[Manifest]], Iterable[Violation]]] = {
    "metadata-name": rule_metadata_name,
    "container-limits": rule_container_limits,
    "restricted-security": rule_restricted_security,
    "namespace-pod-security": rule_namespace_pod_security,
    "rbac-scope": rule_rbac_scope,
    "gpu-tolerations": rule_gpu_tolerations,
    "partition-coverage": rule_partition_coverage,
    "headless-service": rule_headless_service,
    "image-allow-list": rule_image_allow_list,
    "network-policy-coverage": rule_network_policy_coverage,
    "patch-atomic-list": rule_patch_atomic_list,
}


def check(manifests: Iterable[Manifest]) -> list[Violation]:
    """Every violation of every rule, rule by rule."""
    listed = list(manifests)
    return [v for rule in RULES.values() for v in rule(listed)]
