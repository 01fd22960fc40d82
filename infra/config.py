"""What a datacenter stack file (`stacks/Pulumi.<dc>.yaml`) may say under `graphfleet:`, validated once.

`load_stack_config` turns the file into a `StackConfig` or raises a `ConfigError` naming the file,
the key path as written in the file (camelCase) and the fix; nothing is declared before that.
Shared graph services reuse `infra.spec.DataServiceSpec`: the same rules as an ephemeral fleet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from infra.config_fields import (
    NAMESPACE,
    Cpu,
    DnsLabel,
    Duration,
    EnvName,
    Memory,
    Model,
    Subdomain,
    camel,
    check_not_secret_env,
    no_duplicates,
    snake,
)
from infra.connector_config import ConnectorConfig, ObjectStore
from infra.images import check_image
from infra.spec import DataServiceSpec, check_labels, describe_error

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



# A kubernetes provider's `kubeconfig` that makes the provider load $KUBECONFIG (or ~/.kube/config, or the
# in-cluster config) itself: left None, pulumi_kubernetes' SDK fills in $KUBECONFIG's path, which becomes
# a recorded input (docs/external-contracts.md, "kubeconfig").
AMBIENT_KUBECONFIG = ""


class ConfigError(ValueError):
    """A stack file that cannot be deployed; the message names the file, the key and the fix."""


class DatacenterInfo(Model):
    name: DnsLabel = Field(description="The datacenter, also the stack name: ltx1, lva1")
    region: str = Field(min_length=1, description="Where it is, for people and labels")


class Namespaces(Model):
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


class Toleration(Model):
    key: str = Field(min_length=1)
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("operator Exists takes no value; remove value or use operator Equal")
        return self


class Placement(Model):
    """Where pods go: a node selector and the taints they tolerate."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        # Label syntax only: node selectors may use prefixes reserved in fleet labels (nvidia.com/...).
        check_labels(value)
        return value


class Taint(Model):
    """The taint that keeps everything but GPU training off a pool's nodes."""

    key: str = GPU_RESOURCE
    value: str = "present"
    effect: Literal["NoSchedule", "NoExecute"] = "NoSchedule"

    def manifest(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}

    def toleration(self) -> dict[str, str]:
        """What a pod (or a Kueue flavor) must carry to land on the tainted nodes."""
        return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}


class TeamQuota(Model):
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
        no_duplicates(value, "namespace")
        return value


class KarpenterProvisioning(Model):
    instance_types: list[str] = Field(min_length=1, description="EC2 instance types, e.g. p5.48xlarge")
    max_nodes: int = Field(ge=1, le=10_000, description="The pool never grows past this many nodes")
    capacity_types: list[Literal["on-demand", "spot", "reserved"]] = Field(["on-demand"], min_length=1)
    node_class: DnsLabel = Field("gpu", description="The EC2NodeClass the nodes are built from")
    consolidate_after: Duration = Field("30m", description="How long a node sits empty before removal")

    @field_validator("instance_types")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        no_duplicates(value, "instance type")
        return value


class GpuPool(Model):
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
            no_duplicates(self.nodes, "node")
        elif self.karpenter is None or self.nodes is not None:
            raise ValueError("kind karpenter needs `karpenter` (instanceTypes, maxNodes), not `nodes`")
        no_duplicates([t.name for t in self.teams], "team name")
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


class SharedService(Model):
    """A long-lived graph service (a popular graph kept loaded); tasks use it with `reuse: <name>`."""

    name: DnsLabel
    spec: DataServiceSpec

    @field_validator("spec", mode="before")
    @classmethod
    def _snake_keys(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {snake(str(k)): v for k, v in value.items()}
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
        no_duplicates([p.name for p in value], "pool name")
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
        no_duplicates([s.name for s in value], "shared service name")
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
