"""What a datacenter stack file (`stacks/Pulumi.<dc>.yaml`) may say under `graphfleet:`, validated once.

`load_stack_config` turns the file into a `StackConfig` or raises a `ConfigError` naming the file,
the key path as written in the file (camelCase) and the fix; nothing is declared before that.
Shared graph services reuse `infra.spec.DataServiceSpec`: the same rules as an ephemeral fleet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from infra import names
from infra.images import check_allow_list_entry, check_image, split_image
from infra.quantity import parse_cpu, parse_memory
from infra.spec import DataServiceSpec, check_labels, describe_error

NAMESPACE = "graphfleet"
# The Kubernetes provider's key; required here, read by the datacenter's explicit provider.
KUBE_CONTEXT = "kubernetes:context"
GPU_RESOURCE = "nvidia.com/gpu"
# Node label every GPU pool's nodes carry; training pods select on it.
POOL_LABEL = "graphfleet.io/gpu-pool"
# On a static GPU node: the taints its kubelet registers with (--register-with-taints;
# `key=value:effect`, comma-separated), for plan and policy.
KUBELET_TAINTS = "graphfleet.io/kubelet-taints"
# Our own label: GPU feature discovery owns nvidia.com/gpu.product and would overwrite it.
GPU_MODEL_LABEL = "graphfleet.io/gpu-model"

# Pulumi's KMS secrets providers (the alternative to a passphrase).
SECRETS_PROVIDER_URL = r"^(awskms|gcpkms|azurekeyvault|hashivault)://.+"
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


# A kubernetes provider's `kubeconfig` that makes the provider load $KUBECONFIG (or ~/.kube/config, or the
# in-cluster config) itself: left None, pulumi_kubernetes' SDK fills in $KUBECONFIG's path, which becomes
# a recorded input (docs/external-contracts.md, "kubeconfig").
AMBIENT_KUBECONFIG = ""


class ConfigError(ValueError):
    """A stack file that cannot be deployed; the message names the file, the key and the fix."""


def camel(name: str) -> str:
    """`gpus_per_node` -> `gpusPerNode`: how keys are spelled in a stack file."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def _checked(check: Any) -> AfterValidator:
    """Adapt an `infra.names` check (whose message starts with a field name) to a pydantic field."""

    def run(value: str) -> str:
        try:
            return str(check(value, "value"))
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("value: ")) from None

    return AfterValidator(run)


DnsLabel = Annotated[str, _checked(names.check_dns1035_label)]
Subdomain = Annotated[str, _checked(names.check_subdomain)]
EnvName = Annotated[str, _checked(names.check_env_name)]


def _cpu(value: str) -> str:
    parse_cpu(value)
    return value


def _memory(value: str) -> str:
    parse_memory(value)
    return value


Cpu = Annotated[str, AfterValidator(_cpu)]
Memory = Annotated[str, AfterValidator(_memory)]


def parse_duration(value: str) -> float:
    """A Go duration as FlytePropeller reads it ("10s", "1m30s") in seconds."""
    if not _DURATION.match(value):
        raise ValueError(f"must be a duration such as '10s', '1m' or '1m30s', got {value!r}")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h)", value))


def _duration(value: str) -> str:
    parse_duration(value)
    return value


Duration = Annotated[str, AfterValidator(_duration)]
# FlyteAdmin's namespace mapping, `{project}` and `{domain}` filled in: where an execution runs.
NamespaceTemplate = Annotated[str, Field(pattern=r"^[-a-z0-9{}]+$")]
# Bounds of the connector's pod-failure thresholds, for the stack and the connector's settings alike.
MAX_UNSCHEDULABLE_SECONDS = 86_400
MAX_CRASH_LOOP_RESTARTS = 100


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=camel,
                              validate_by_name=True, validate_by_alias=True)


class DatacenterInfo(_Model):
    name: DnsLabel = Field(description="The datacenter, also the stack name: ltx1, lva1")
    region: str = Field(min_length=1, description="Where it is, for people and labels")


class Namespaces(_Model):
    data_services: DnsLabel = Field("graphfleet-data", description="The connector's ephemeral fleets")
    shared_services: DnsLabel = Field(
        "graphfleet-shared", description="Long-lived shared graph services, out of the connector's reach")
    connector: DnsLabel = Field("graphfleet-system", description="The Flyte connector")
    training: DnsLabel = Field("graphfleet-training", description="Training pods and their Kueue LocalQueues")

    @model_validator(mode="after")
    def _separate(self) -> Namespaces:
        if self.connector == self.data_services:
            raise ValueError(f"connector and dataServices are both {self.connector!r}: the connector may "
                             f"create and delete StatefulSets in dataServices, so give it its own namespace")
        if self.shared_services in (self.data_services, self.connector):
            raise ValueError(f"sharedServices is {self.shared_services!r}, also a namespace the connector "
                             f"runs in or manages: its Role there could modify or delete the long-lived "
                             f"shared services, so give them their own namespace")
        return self


class Toleration(_Model):
    key: str = Field(min_length=1)
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("operator Exists takes no value; remove value or use operator Equal")
        return self


class Placement(_Model):
    """Where pods go: a node selector and the taints they tolerate."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        # Label syntax only: node selectors may use prefixes reserved in fleet labels (nvidia.com/...).
        check_labels(value)
        return value


class Taint(_Model):
    """The taint that keeps everything but GPU training off a pool's nodes."""

    key: str = GPU_RESOURCE
    value: str = "present"
    effect: Literal["NoSchedule", "NoExecute"] = "NoSchedule"

    def manifest(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}

    def toleration(self) -> dict[str, str]:
        """What a pod (or a Kueue flavor) must carry to land on the tainted nodes."""
        return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}


class TeamQuota(_Model):
    """A team's guaranteed share of a pool (Kueue nominal quota); idle quota is lent within the pool."""

    name: DnsLabel
    gpus: int = Field(ge=0, le=100_000)
    cpu: Cpu = "64"
    memory: Memory = "512Gi"
    namespaces: list[DnsLabel] = Field(
        default_factory=list,
        description="Flyte's `<project>-<domain>` namespaces of this team's workflows: Flyte runs task pods "
                    "there, so each gets the team's LocalQueue and is admitted to its ClusterQueue and to "
                    "the graph fleets (besides the training namespace)")

    @field_validator("namespaces")
    @classmethod
    def _unique_namespaces(cls, value: list[str]) -> list[str]:
        _no_duplicates(value, "namespace")
        return value


class KarpenterProvisioning(_Model):
    instance_types: list[str] = Field(min_length=1, description="EC2 instance types, e.g. p5.48xlarge")
    max_nodes: int = Field(ge=1, le=10_000, description="The pool never grows past this many nodes")
    capacity_types: list[Literal["on-demand", "spot", "reserved"]] = Field(["on-demand"], min_length=1)
    node_class: DnsLabel = Field("gpu", description="The EC2NodeClass the nodes are built from")
    consolidate_after: Duration = Field("30m", description="How long a node sits empty before removal")

    @field_validator("instance_types")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        _no_duplicates(value, "instance type")
        return value


class GpuPool(_Model):
    name: DnsLabel
    gpu_model: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                           description="The GPU model (a label value), e.g. NVIDIA-A100-SXM4-80GB")
    gpus_per_node: int
    kind: Literal["static", "karpenter"]
    nodes: list[Subdomain] | None = Field(None, description="static: the node names to label and taint")
    karpenter: KarpenterProvisioning | None = None
    taint: Taint = Taint()
    teams: list[TeamQuota] = Field(min_length=1)
    priority: int = Field(1000, ge=0, le=1_000_000_000, description="PriorityClass value for training pods")

    @field_validator("gpus_per_node", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 16:
            raise ValueError(f"must be 1-16, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GpuPool:
        if self.kind == "static":
            if not self.nodes or self.karpenter is not None:
                raise ValueError("kind static needs `nodes` (the node names to label), not `karpenter`")
            _no_duplicates(self.nodes, "node")
        elif self.karpenter is None or self.nodes is not None:
            raise ValueError("kind karpenter needs `karpenter` (instanceTypes, maxNodes), not `nodes`")
        _no_duplicates([t.name for t in self.teams], "team name")
        quota = sum(t.gpus for t in self.teams)
        if quota > self.gpu_capacity:
            raise ValueError(
                f"teams' GPU quotas add up to {quota} but the pool holds {self.gpu_capacity} "
                f"({self.node_count} nodes x {self.gpus_per_node} GPUs): lower a team's gpus or add nodes")
        return self

    @property
    def node_count(self) -> int:
        """Nodes the pool has (static) or may grow to (karpenter)."""
        return len(self.nodes) if self.nodes is not None else self.karpenter.max_nodes  # type: ignore[union-attr]

    @property
    def gpu_capacity(self) -> int:
        return self.node_count * self.gpus_per_node


class SecretKeyRef(_Model):
    name: Subdomain
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")


class ConnectorSecrets(_Model):
    """Kubernetes Secrets the connector reads; their values never appear in the stack file."""

    backend_url: SecretKeyRef = Field(description="PULUMI_BACKEND_URL, e.g. s3://bucket?region=...")
    passphrase: SecretKeyRef | None = Field(None, description="PULUMI_CONFIG_PASSPHRASE")
    secrets_provider: str | None = Field(
        None, pattern=SECRETS_PROVIDER_URL,
        description="A KMS secrets provider instead of a passphrase, e.g. awskms://alias/graphfleet")
    aws_credentials: Subdomain | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; omit to use the pod's role")

    @model_validator(mode="after")
    def _one_provider(self) -> ConnectorSecrets:
        if (self.passphrase is None) == (self.secrets_provider is None):
            raise ValueError("set exactly one of passphrase (a Secret key) or secretsProvider (a KMS URL): "
                             "Pulumi needs one to encrypt stack secrets")
        return self

    def secret_names(self) -> list[str]:
        """The Secrets the connector reads (and may be granted `get` on, by name)."""
        found = [self.backend_url.name] + ([self.passphrase.name] if self.passphrase else [])
        found += [self.aws_credentials] if self.aws_credentials else []
        return sorted(set(found))


class WorkloadIdentity(_Model):
    """Annotations for a ServiceAccount, e.g. IRSA's `eks.amazonaws.com/role-arn` or GKE's
    `iam.gke.io/gcp-service-account`: the cloud grants the pods access, no key exists."""

    annotations: dict[str, str] = Field(min_length=1)

    @field_validator("annotations")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(dict.fromkeys(value, ""))  # annotation keys have the label-key syntax
        return value


class ObjectStore(_Model):
    """Where the graphs live and how both the connector and the graph-engine servers read them."""

    endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(/.*)?$",
                                 description="S3-compatible endpoint (on-prem MinIO); unset: AWS S3")
    credentials: SecretKeyRef | None = Field(
        None, description="A Secret key holding an AWS shared-credentials file with a "
                          "[graphfleet-graphs] profile; the Secret must exist in the connector, "
                          "dataServices and sharedServices namespaces. Mounted read-only, never env")
    graph_engine_identity: WorkloadIdentity | None = Field(
        None, description="Workload identity of every graph-engine server (its ServiceAccount's annotations)")
    connector_identity: WorkloadIdentity | None = Field(
        None, description="Workload identity of the connector (its ServiceAccount's annotations)")


class Autoscaling(_Model):
    min_replicas: int = Field(2, ge=2, le=100)
    max_replicas: int = Field(ge=2, le=100)
    target_cpu_percent: int = Field(70, ge=10, le=95)

    @model_validator(mode="after")
    def _order(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas})")
        return self


class PropellerTimeouts(_Model):
    """Deadlines FlytePropeller gives each connector call (its default is 10 s each)."""

    create_task: Duration = "30s"
    get_task: Duration = "10s"
    delete_task: Duration = "30s"

    @field_validator("create_task", "get_task", "delete_task")
    @classmethod
    def _bounded(cls, value: str) -> str:
        if not 1 <= parse_duration(value) <= 600:
            raise ValueError(f"must be between 1s and 10m, got {value!r}")
        return value


class PodFailures(_Model):
    """When a fleet that cannot start fails, told from its pods (flyte_agent/pod_failures.py); unset: the
    connector's defaults (GRAPHFLEET_UNSCHEDULABLE_SECONDS, GRAPHFLEET_CRASH_LOOP_RESTARTS)."""

    unschedulable_grace: Duration | None = Field(
        None, description="How long a fleet's pod may stay Unschedulable before the fleet fails: the time "
                          "your node autoscaler takes to add a node")
    crash_loop_restarts: int | None = Field(
        None, ge=1, le=MAX_CRASH_LOOP_RESTARTS,
        description="Restarts of a graph-engine container in CrashLoopBackOff before the fleet fails")

    @field_validator("unschedulable_grace")
    @classmethod
    def _grace(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) > MAX_UNSCHEDULABLE_SECONDS:
            raise ValueError(f"must be at most {MAX_UNSCHEDULABLE_SECONDS // 3600}h, got {value!r}")
        return value


class ServiceMonitor(_Model):
    """A prometheus-operator `monitoring.coreos.com/v1` ServiceMonitor for the connector's metrics port,
    beside the pods' `prometheus.io/*` scrape annotations (for Prometheus set up without the operator)."""

    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels your Prometheus' serviceMonitorSelector matches, "
                                          "e.g. {release: kube-prometheus-stack}")
    interval: Duration = Field("30s", description="Scrape interval")


class ConnectorConfig(_Model):
    image: str
    replicas: int = 2
    autoscaling: Autoscaling | None = None
    max_concurrent_operations: int = Field(4, ge=1, le=64, description="Pulumi operations per replica")
    cpu: Cpu = "500m"
    memory: Memory = "1Gi"
    cpu_limit: Cpu = "2"
    memory_limit: Memory = "2Gi"
    image_allow_list: list[str] = Field(min_length=1, description="Graph-engine repositories fleets may run")
    secrets: ConnectorSecrets
    timeouts: PropellerTimeouts = PropellerTimeouts()
    pod_failures: PodFailures = PodFailures()
    flyte_plugins: list[Annotated[str, Field(pattern=r"^[a-z0-9][-a-z0-9_]*$")]] = Field(
        default_factory=list, description="Task plugins your Flyte enables beyond the chart's defaults "
                                          "(e.g. spark): kept in the enabled-plugins list we emit")
    tls_secret: Subdomain | None = Field(
        None, description="A kubernetes.io/tls Secret (tls.crt, tls.key) in the connector namespace: serve "
                          "gRPC over TLS; propeller must trust its issuer")
    # Unset: the connector's defaults (GRAPHFLEET_WATCH_EXECUTIONS, GRAPHFLEET_CONSUMER_NAMESPACE).
    watch_executions: bool | None = Field(
        None, description="Release a fleet once its Flyte execution is aborted or failed, renew it while "
                          "it runs (reads FlyteWorkflows: propeller must run in this cluster)")
    consumer_namespace: NamespaceTemplate | None = Field(
        None, description="FlyteAdmin's namespace_mapping template: where an execution's FlyteWorkflow lives")
    propeller_namespace: DnsLabel = Field("flyte", description="FlytePropeller's namespace: the only one "
                                                               "admitted to the connector's gRPC port")
    prometheus_namespace: DnsLabel | None = Field(
        None, description="Prometheus' namespace, admitted to the metrics port; unset: none")
    service_monitor: ServiceMonitor | None = Field(
        None, description="Render a ServiceMonitor (needs prometheus-operator's CRD in the cluster)")

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        split_image(value)
        return value

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"must be at least 2 so one pod's restart does not stall every workflow's "
                             f"data service (or use autoscaling with minReplicas >= 2), got {value}")
        return value

    @field_validator("image_allow_list")
    @classmethod
    def _repositories(cls, value: list[str]) -> list[str]:
        for entry in value:
            check_allow_list_entry(entry)
        _no_duplicates(value, "allow-list entry")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ConnectorConfig:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise ValueError("set replicas or autoscaling, not both: the autoscaler owns the replica count")
        if parse_cpu(self.cpu_limit) < parse_cpu(self.cpu):
            raise ValueError(f"cpuLimit {self.cpu_limit} is below the request cpu {self.cpu}")
        if parse_memory(self.memory_limit) < parse_memory(self.memory):
            raise ValueError(f"memoryLimit {self.memory_limit} is below the request memory {self.memory}")
        return self

    @property
    def min_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas


class SharedService(_Model):
    """A long-lived graph service (a popular graph kept loaded); tasks use it with `reuse: <name>`."""

    name: DnsLabel
    spec: DataServiceSpec

    @field_validator("spec", mode="before")
    @classmethod
    def _snake_keys(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {_snake(str(k)): v for k, v in value.items()}
        return value

    @field_validator("spec")
    @classmethod
    def _complete(cls, value: DataServiceSpec) -> DataServiceSpec:
        if value.graph_uri is None:
            raise ValueError("a shared service serves its own graph: set graphUri (reuse is for tasks)")
        if not value.graph_uri.startswith("s3://"):
            raise ValueError(f"graphUri {value.graph_uri!r} is a local path, which pods cannot read; "
                             f"upload the graph and use s3://bucket/prefix")
        if value.partitions is None:
            raise ValueError("set partitions to the graph's partition count: the plan must check that "
                             "every partition is served without reading the graph")
        if "ttl_seconds" in value.model_fields_set:
            raise ValueError("ttlSeconds is for ephemeral fleets: a shared service runs until it is removed "
                             "from sharedServices, nothing garbage-collects it; remove ttlSeconds")
        return value


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _stack_key(name: str) -> str:
    return f"{NAMESPACE}:{camel(name)}"


class StackConfig(BaseModel):
    """One datacenter: everything under `graphfleet:` in its stack file."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=_stack_key,
                              validate_by_name=True, validate_by_alias=True)

    datacenter: DatacenterInfo
    kubernetes_context: str = Field(
        alias="kubernetes:context", min_length=1,
        description="kubeconfig context of this datacenter's cluster: the stack's explicit provider uses "
                    "it, so `up` never deploys to whatever context happens to be current")
    namespaces: Namespaces = Field(default_factory=lambda: Namespaces.model_validate({}))
    graph_service_placement: Placement = Field(
        Placement(), description="CPU nodes for graph-engine servers: node selector and tolerations")
    gpu_pools: list[GpuPool] = Field(default_factory=list)
    connector: ConnectorConfig
    graph_engine_image: str = Field(description="Default image of every graph-engine fleet")
    graph_engine_env: dict[EnvName, str] = Field(
        default_factory=dict, description="Plain (non-secret) environment of every graph-engine server, "
                                          "e.g. AWS_REGION; the object store is `objectStore`")
    object_store: ObjectStore = Field(
        default_factory=lambda: ObjectStore(),
        description="Endpoint, credentials (a Secret, mounted) and workload identity for reading graphs")
    shared_services: list[SharedService] = Field(default_factory=list)

    @field_validator("gpu_pools")
    @classmethod
    def _unique_pools(cls, value: list[GpuPool]) -> list[GpuPool]:
        _no_duplicates([p.name for p in value], "pool name")
        # A node in two pools would be labelled twice (the last patch wins) and counted twice in quotas.
        owner: dict[str, str] = {}
        for index, pool in enumerate(value):
            for node_index, node in enumerate(pool.nodes or []):
                if node in owner:
                    raise ValueError(f"node {node!r} is in pools {owner[node]!r} and {pool.name!r} "
                                     f"([{index}].nodes[{node_index}]); a node belongs to one pool: "
                                     f"remove it from one")
                owner[node] = pool.name
        return value

    @field_validator("graph_engine_env")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            check_not_secret_env(name)
        return value

    @field_validator("graph_engine_image")
    @classmethod
    def _allowed_image(cls, value: str, info: ValidationInfo) -> str:
        connector = info.data.get("connector")
        return check_image(value, connector.image_allow_list) if connector else value

    @field_validator("shared_services")
    @classmethod
    def _shared(cls, value: list[SharedService], info: ValidationInfo) -> list[SharedService]:
        _no_duplicates([s.name for s in value], "shared service name")
        connector = info.data.get("connector")
        for index, service in enumerate(value):
            if connector and service.spec.image is not None:
                try:
                    check_image(service.spec.image, connector.image_allow_list)
                except ValueError as exc:
                    raise ValueError(f"sharedServices[{index}].spec.image ({service.name}): {exc}") from None
        return value

    def stack_namespaces(self) -> list[str]:
        """The namespaces this stack's own objects live in (one namespace may serve several roles)."""
        ns = self.namespaces
        return list(dict.fromkeys([ns.connector, ns.data_services, ns.shared_services, ns.training]))

    def team_namespaces(self) -> list[str]:
        """Every team's Flyte project-domain namespaces (Flyte creates them; they hold LocalQueues)."""
        teams = (team for pool in self.gpu_pools for team in pool.teams)
        return list(dict.fromkeys(n for team in teams for n in team.namespaces))

    def client_namespaces(self) -> list[str]:
        """Where pods that read graph fleets run: the connector (it health-checks fleets), the training
        namespace and every team's Flyte namespaces."""
        return sorted({self.namespaces.connector, self.namespaces.training, *self.team_namespaces()})

    def image_of(self, service: SharedService) -> str:
        return service.spec.image or self.graph_engine_image


# Variables that carry credentials or redirect where graphs are read: they come from `objectStore`
# (a mounted Secret, workload identity), never as plain values in a manifest or Pulumi state.
_SECRET_ENV = re.compile(r"(SECRET|PASSWORD|PASSPHRASE|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY)")
_STORE_ENV = frozenset({"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL",
                        "AWS_SHARED_CREDENTIALS_FILE", "FSSPEC_S3_PROFILE", "AWS_PROFILE"})


def check_not_secret_env(name: str) -> str:
    """Refuse a plain environment variable that would carry a secret or bypass `objectStore`."""
    if _SECRET_ENV.search(name.upper()):
        raise ValueError(f"{name}: looks like a credential, which must not be a plain value (it would be "
                         f"in the StatefulSet and in Pulumi state); put it in a Secret and set "
                         f"{NAMESPACE}:objectStore.credentials, or use objectStore.graphEngineIdentity")
    if name in _STORE_ENV:
        raise ValueError(f"{name}: set {NAMESPACE}:objectStore.endpoint / credentials instead, so the "
                         f"connector and the servers read graphs from the same place")
    return name


def _no_duplicates(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}: each must be unique")
        seen.add(value)


STACKS_DIR = Path(__file__).resolve().parent.parent / "stacks"


def stack_path(stack: str) -> Path:
    """A stack name (`ltx1`) or a path to a stack file -> the stack file's path."""
    candidate = Path(stack)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    return STACKS_DIR / f"Pulumi.{stack}.yaml"


def stack_name(path: Path) -> str:
    """`stacks/Pulumi.ltx1.yaml` -> `ltx1`."""
    return path.name.removeprefix("Pulumi.").rsplit(".", 1)[0]


def load_stack_config(path: str | Path) -> StackConfig:
    """Read a Pulumi stack file and validate its `graphfleet:` keys; raise ConfigError naming the problem."""
    path = Path(path)
    where = str(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        known = sorted(stack_name(p) for p in STACKS_DIR.glob("Pulumi.*.yaml"))
        raise ConfigError(f"{where}: no such stack file; known stacks: {', '.join(known) or 'none'}") \
            from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ConfigError(f"{where}: a stack file is a mapping with a `config:` mapping of "
                          f"`graphfleet:<key>` entries")
    return stack_config_from_mapping(document["config"], where, expected_name=stack_name(path))


def stack_config_from_mapping(values: Mapping[str, Any], where: str,
                              expected_name: str | None = None) -> StackConfig:
    """Validate config values (a stack file's `config:`, or what `pulumi up` hands the program).

    Keys of other namespaces (`kubernetes:context`) are left to their owners. Values that arrive as
    JSON text (how the Pulumi engine passes structured config to a program) are decoded first.
    """
    ours: dict[str, Any] = {}
    for key, value in values.items():
        if ":" not in key:
            raise ConfigError(f"{where}: {key}: unknown key; stack config keys are namespaced, "
                              f"write {NAMESPACE}:{key}")
        if key.startswith(f"{NAMESPACE}:") or key == KUBE_CONTEXT:
            ours[key] = decoded_json(value)
    if KUBE_CONTEXT not in ours:
        raise ConfigError(f"{where}: {KUBE_CONTEXT}: not set; name the kubeconfig context of this "
                          f"datacenter's cluster (without it `pulumi up` would deploy to whatever context "
                          f"is current)")
    try:
        config = StackConfig.model_validate(ours)
    except ValidationError as err:
        raise ConfigError(describe_error(err, where, key=camel)) from None
    if expected_name is not None and config.datacenter.name != expected_name:
        raise ConfigError(f"{where}: {NAMESPACE}:datacenter.name: {config.datacenter.name!r} does not match "
                          f"the stack {expected_name!r}; a stack file describes its own datacenter")
    return config


def decoded_json(value: Any) -> Any:
    """A string holding a JSON object or array, decoded; anything else as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def config_items(config: StackConfig) -> dict[str, Any]:
    """The stack file's `config:` entries that say `config` (camelCase, what was set)."""
    dumped = config.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {key: _camel_keys(value) for key, value in dumped.items()}


def _camel_keys(value: Any) -> Any:
    # DataServiceSpec has no aliases: its snake_case keys become the file's camelCase here.
    if isinstance(value, dict):
        return {camel(k): _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value
