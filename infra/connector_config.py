"""The connector's section of a stack file (`graphfleet:connector`, `graphfleet:objectStore`): what
infra/connector_deployment.py renders the connector from, validated once.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from infra.config_fields import (
    Cpu,
    DnsLabel,
    Duration,
    Memory,
    Model,
    NamespaceTemplate,
    Subdomain,
    no_duplicates,
    parse_duration,
)
from infra.images import check_allow_list_entry, split_image
from infra.quantity import parse_cpu, parse_memory
from infra.spec import check_labels

# Pulumi's KMS secrets providers (the alternative to a passphrase).
SECRETS_PROVIDER_URL = r"^(awskms|gcpkms|azurekeyvault|hashivault)://.+"
# Bounds of the connector's pod-failure thresholds, for the stack and the connector's settings alike.
MAX_UNSCHEDULABLE_SECONDS = 86_400
MAX_CRASH_LOOP_RESTARTS = 100


class SecretKeyRef(Model):
    name: Subdomain
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")


class ConnectorSecrets(Model):
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


class WorkloadIdentity(Model):
    """Annotations for a ServiceAccount, e.g. IRSA's `eks.amazonaws.com/role-arn` or GKE's
    `iam.gke.io/gcp-service-account`: the cloud grants the pods access, no key exists."""

    annotations: dict[str, str] = Field(min_length=1)

    @field_validator("annotations")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(dict.fromkeys(value, ""))  # annotation keys have the label-key syntax
        return value


class ObjectStore(Model):
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


class Autoscaling(Model):
    min_replicas: int = Field(2, ge=2, le=100)
    max_replicas: int = Field(ge=2, le=100)
    target_cpu_percent: int = Field(70, ge=10, le=95)

    @model_validator(mode="after")
    def _order(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas})")
        return self


class PropellerTimeouts(Model):
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


class PodFailures(Model):
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


class ServiceMonitor(Model):
    """A prometheus-operator `monitoring.coreos.com/v1` ServiceMonitor for the connector's metrics port,
    beside the pods' `prometheus.io/*` scrape annotations (for Prometheus set up without the operator)."""

    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels your Prometheus' serviceMonitorSelector matches, "
                                          "e.g. {release: kube-prometheus-stack}")
    interval: Duration = Field("30s", description="Scrape interval")


class ConnectorConfig(Model):
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
        no_duplicates(value, "allow-list entry")
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
