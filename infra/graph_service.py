"""`GraphDataService`: one DeepGNN graph-engine fleet on Kubernetes.

A headless Service gives each StatefulSet pod a stable DNS name; pod `i` serves partitions
`i, i+R, ... < P` (DeepGNN's server-group rule); a native gRPC readiness probe turns "graph loaded"
into pod readiness, so `pulumi up` (which waits for the StatefulSet) returns only when every shard
answers. A PodDisruptionBudget keeps voluntary evictions from removing shards mid-training, and a
NetworkPolicy admits only pods labelled as graph clients.

The manifests are built by plain functions from `GraphDataServiceArgs`; the component only
registers them. The number of objects does not depend on the replica count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import ValidationError

from infra import names, object_store
from infra.config_fields import check_not_secret_env
from infra.connector_config import ObjectStore
from infra.contract import CLIENT_LABEL
from infra.image_contract import GRAPH_ENGINE_UID
from infra.pod_security import container_security_context, pod_security_context
from infra.spec import DataServiceSpec, describe_error

TYPE_TOKEN = "graphfleet:graph:GraphDataService"
APP_NAME = "graph-engine"
MANAGED_BY = "graphfleet"
PORT_NAME = "grpc"
CONTAINER_NAME = "graph-engine"
# Every fleet's pods run as this account, which the Datacenter stack creates in both fleet namespaces.
ENGINE_SERVICE_ACCOUNT = "graphfleet-graph-engine"
ORDINAL_ENV = "GRAPHFLEET_ORDINAL"
# StatefulSet pods carry their ordinal as this label (GA in Kubernetes 1.32).
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
SCRATCH_DIR = "/scratch"
# The server exits at once on SIGTERM; the grace period only covers a slow kubelet.
TERMINATION_GRACE_SECONDS = 30
STARTUP_PROBE_PERIOD_SECONDS = 10
# Scheduling, image pull and node start-up come on top of loading the graph when `pulumi up` waits.
AWAIT_MARGIN_SECONDS = 600


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    def __post_init__(self) -> None:
        if self.operator not in ("Equal", "Exists"):
            raise ValueError(f"toleration {self.key!r}: operator must be 'Equal' or 'Exists', "
                             f"got {self.operator!r}")
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(f"toleration {self.key!r}: operator 'Exists' takes no value; drop value "
                             f"{self.value!r} or use operator 'Equal'")
        if self.effect not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"toleration {self.key!r}: effect must be NoSchedule, PreferNoSchedule or "
                             f"NoExecute, got {self.effect!r}")

    def to_manifest(self) -> dict[str, str]:
        wire = {"key": self.key, "operator": self.operator, "value": self.value, "effect": self.effect}
        return {k: v for k, v in wire.items() if v is not None}


@dataclass(frozen=True)
class Placement:
    """Where the servers may run: the CPU pool's node labels and taints."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    @classmethod
    def of(cls, node_selector: Mapping[str, str], tolerations: Iterable[Any]) -> Placement:
        """From a stack's or the connector settings' placement: tolerations with key, operator,
        value and effect attributes (`infra.config.Toleration`)."""
        return cls(node_selector=dict(node_selector),
                   tolerations=tuple(Toleration(key=t.key, operator=t.operator, value=t.value,
                                                effect=t.effect) for t in tolerations))


@dataclass(frozen=True)
class GraphDataServiceArgs:
    """Everything one fleet needs. Checked on construction, before any resource is declared."""

    name: str                          # base of every object name; shortened when too long
    namespace: str
    spec: DataServiceSpec              # partitions must be resolved (`spec.with_partitions(n)`)
    image: str | None = None           # the datacenter's default; `spec.image` wins when set
    placement: Placement = field(default_factory=Placement)
    labels: Mapping[str, str] = field(default_factory=dict)   # extra labels on every object
    env: Mapping[str, str] = field(default_factory=dict)      # plain settings only, e.g. AWS_REGION
    object_store: ObjectStore = field(default_factory=ObjectStore)  # endpoint, mounted credentials
    service_account: str | None = None  # for S3 access through workload identity
    # Namespaces whose labelled pods may read the fleet; empty: any namespace (local tests only).
    client_namespaces: tuple[str, ...] = ()
    run_as_user: int = GRAPH_ENGINE_UID  # the image's user (docker/graph-engine.Dockerfile)
    long_lived: bool = False            # a datacenter's shared service: no TTL, drains must pass

    def __post_init__(self) -> None:
        names.check_base_name(self.name, "GraphDataServiceArgs.name")
        names.check_label(self.namespace, "GraphDataServiceArgs.namespace")
        spec = self.spec
        if spec.reuse is not None or spec.graph_uri is None:
            raise ValueError(f"GraphDataServiceArgs.spec: reuse={spec.reuse!r} names a shared service; "
                             "a GraphDataService provisions one and needs spec.graph_uri")
        if not spec.graph_uri.startswith("s3://"):
            raise ValueError(f"GraphDataServiceArgs.spec.graph_uri: {spec.graph_uri!r} is a local path, "
                             "which pods cannot read; upload the graph and use s3://bucket/prefix (local "
                             "paths are for the local provisioner)")
        if spec.partitions is None:
            raise ValueError("GraphDataServiceArgs.spec.partitions is not set: read it from the graph's "
                             "meta.json and pass spec.with_partitions(n)")
        if not (self.spec.image or self.image):
            raise ValueError("GraphDataServiceArgs.image: no graph-engine image; set spec.image or the "
                             "datacenter's default image")
        image = self.spec.image or self.image or ""
        if image != image.strip() or " " in image:
            raise ValueError(f"GraphDataServiceArgs.image: {image!r} contains whitespace")
        try:
            DataServiceSpec.model_validate({**spec.to_custom(), "labels": {**spec.labels, **self.labels}})
        except ValidationError as err:
            raise ValueError(describe_error(err, "GraphDataServiceArgs.labels")) from None
        for key in self.env:
            names.check_env_name(key, "GraphDataServiceArgs.env")
            try:
                check_not_secret_env(key)
            except ValueError as exc:
                raise ValueError(f"GraphDataServiceArgs.env: {exc}") from None
        if self.service_account is not None:
            names.check_subdomain(self.service_account, "GraphDataServiceArgs.service_account")
        for namespace in self.client_namespaces:
            names.check_label(namespace, "GraphDataServiceArgs.client_namespaces")
        if self.run_as_user < 1:
            raise ValueError(f"GraphDataServiceArgs.run_as_user: must be a non-root uid (>= 1), "
                             f"got {self.run_as_user}")

    @property
    def partitions(self) -> int:
        assert self.spec.partitions is not None  # checked in __post_init__
        return self.spec.partitions

    @property
    def effective_image(self) -> str:
        return self.spec.image or self.image or ""


@dataclass(frozen=True)
class FleetNames:
    statefulset: str
    service: str          # also the PDB's and NetworkPolicy's name, and the instance label
    namespace: str

    @classmethod
    def of(cls, args: GraphDataServiceArgs) -> FleetNames:
        return cls(statefulset=names.statefulset_name(args.name), service=names.object_name(args.name),
                   namespace=args.namespace)


def selector_labels(fleet: FleetNames) -> dict[str, str]:
    """The immutable subset that selects the fleet's pods."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": fleet.service}


def object_labels(args: GraphDataServiceArgs) -> dict[str, str]:
    return {**args.spec.labels, **args.labels, **selector_labels(FleetNames.of(args)),
            "app.kubernetes.io/managed-by": MANAGED_BY}


def engine_service_account_manifest(namespace: str, store: ObjectStore) -> dict[str, Any]:
    """The servers' own account in a fleet namespace: no API token (they never call the API), and
    the object store's workload identity when the stack sets one."""
    metadata: dict[str, Any] = {"name": ENGINE_SERVICE_ACCOUNT, "namespace": namespace,
                                "labels": {"app.kubernetes.io/name": APP_NAME,
                                           "app.kubernetes.io/managed-by": MANAGED_BY}}
    if store.graph_engine_identity is not None:
        metadata["annotations"] = dict(store.graph_engine_identity.annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata,
            "automountServiceAccountToken": False}


def server_command(spec: DataServiceSpec) -> list[str]:
    """The container command; `$(GRAPHFLEET_ORDINAL)` is expanded by the kubelet from the pod's env."""
    if spec.graph_uri is None or spec.partitions is None:
        raise ValueError("server_command needs spec.graph_uri and spec.partitions")
    return ["python", "-m", "graph_engine.server", "--data-dir", spec.graph_uri, "--port", str(spec.port),
            "--ordinal", f"$({ORDINAL_ENV})", "--replicas", str(spec.replicas),
            "--partitions", str(spec.partitions), *spec.args]


def endpoints(fleet: FleetNames, replicas: int, port: int) -> list[str]:
    """`host:port` of every server, ordinal order."""
    return [f"{names.pod_fqdn(fleet.statefulset, fleet.service, fleet.namespace, i)}:{port}"
            for i in range(replicas)]


def await_timeout_seconds(spec: DataServiceSpec) -> int:
    """How long `pulumi up` waits for the StatefulSet: the load budget plus scheduling and pulls."""
    return spec.startup_seconds + AWAIT_MARGIN_SECONDS


def _manifest(api_version: str, kind: str, args: GraphDataServiceArgs, name: str, spec: dict[str, Any],
              annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": args.namespace, "labels": object_labels(args)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def service_manifest(args: GraphDataServiceArgs) -> dict[str, Any]:
    fleet = FleetNames.of(args)
    return _manifest("v1", "Service", args, fleet.service, {
            "clusterIP": "None",
            # Only loaded servers get DNS records (publishNotReadyAddresses is left false by leaving it
            # out: an omitempty false is not stored, and a second field manager applying it conflicts).
            "selector": selector_labels(fleet),
            "ports": [{"name": PORT_NAME, "port": args.spec.port, "targetPort": PORT_NAME, "protocol": "TCP",
                       "appProtocol": "kubernetes.io/h2c"}],
        })


def probes(spec: DataServiceSpec) -> dict[str, dict[str, Any]]:
    """Startup allows `startup_seconds` to load; then readiness gates traffic and liveness restarts."""
    def grpc(period: int, failures: int) -> dict[str, Any]:
        return {"grpc": {"port": spec.port}, "periodSeconds": period, "timeoutSeconds": 5,
                "failureThreshold": failures}
    return {
        "startupProbe": grpc(STARTUP_PROBE_PERIOD_SECONDS,
                             math.ceil(spec.startup_seconds / STARTUP_PROBE_PERIOD_SECONDS)),
        "readinessProbe": grpc(5, 3),
        "livenessProbe": grpc(20, 3),
    }


def statefulset_manifest(args: GraphDataServiceArgs) -> dict[str, Any]:
    fleet = FleetNames.of(args)
    spec = args.spec
    selector = selector_labels(fleet)
    requests = {"cpu": spec.cpu, "memory": spec.memory, "ephemeral-storage": spec.scratch_size}
    limits = {"cpu": spec.cpu_limit or spec.cpu, "memory": spec.memory_limit or spec.memory}
    env = [
        {"name": ORDINAL_ENV,
         # apiVersion as the apiserver defaults it: fieldRef is atomic, so a short form differs from the
         # stored one and conflicts when another field manager (a retried `up`) applies it again.
         "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                    "fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}}},
        # The root filesystem is read-only: every download and cache goes to the scratch volume.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        *({"name": k, "value": v} for k, v in sorted(args.env.items())),
        *object_store.env(args.object_store),
    ]
    container = {
        "name": CONTAINER_NAME,
        "image": args.effective_image,
        "imagePullPolicy": "IfNotPresent",
        "command": server_command(spec),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        **probes(spec),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_DIR},
                         *object_store.volume_mounts(args.object_store)],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security_context(args.run_as_user),
        # The servers never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": spec.scratch_size}},
                    *object_store.volumes(args.object_store)],
        # Soft spread: a fleet that cannot spread must still start, but one node loss should cost
        # as few shards as the cluster allows.
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }],
    }
    if args.placement.node_selector:
        pod_spec["nodeSelector"] = dict(args.placement.node_selector)
    if args.placement.tolerations:
        pod_spec["tolerations"] = [t.to_manifest() for t in args.placement.tolerations]
    if args.service_account:
        pod_spec["serviceAccountName"] = args.service_account
    return _manifest("apps/v1", "StatefulSet", args, fleet.statefulset, {
            "serviceName": fleet.service,
            "replicas": spec.replicas,
            # Shards are independent: start them all at once rather than one after another.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": object_labels(args)}, "spec": pod_spec},
        }, annotations={"pulumi.com/timeoutSeconds": str(await_timeout_seconds(spec))})


def pdb_manifest(args: GraphDataServiceArgs) -> dict[str, Any]:
    """Every shard holds partitions no other server has, so evicting one breaks the reads of that
    shard until it has reloaded them elsewhere.

    Ephemeral fleets: maxUnavailable 0. The fleet is garbage-collected after its TTL, so a node drain
    waits at most that long, and a training run is never cut.
    Long-lived shared services have no end, and maxUnavailable 0 would block every drain forever:
    maxUnavailable 1. A drain moves one shard at a time, and the next eviction waits until the moved
    shard has reloaded its partitions and is Ready again (the PDB counts it unavailable until then);
    clients ride out the gap with their retries or see one shard's outage, never two.
    Both: unhealthyPodEvictionPolicy AlwaysAllow. A shard that is not Ready serves nothing, so
    evicting it costs nothing, and with the default (IfHealthyBudget) one crash-looping shard would
    block every drain of the fleet's nodes.
    """
    fleet = FleetNames.of(args)
    return _manifest("policy/v1", "PodDisruptionBudget", args, fleet.service, {
        "maxUnavailable": 1 if args.long_lived else 0,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": selector_labels(fleet)},
    })


def network_policy_manifest(args: GraphDataServiceArgs) -> dict[str, Any]:
    """Ingress to the gRPC port only from pods labelled as graph clients in the client namespaces: a
    label alone is not a key (anyone who can create a pod somewhere can set it)."""
    fleet = FleetNames.of(args)
    namespaces: dict[str, Any] = {}
    if args.client_namespaces:
        namespaces = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                            "values": sorted(args.client_namespaces)}]}
    return _manifest("networking.k8s.io/v1", "NetworkPolicy", args, fleet.service, {
            "podSelector": {"matchLabels": selector_labels(fleet)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"namespaceSelector": namespaces,
                          "podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}],
                "ports": [{"protocol": "TCP", "port": args.spec.port}],
            }],
        })


class GraphDataService(pulumi.ComponentResource):
    """Outputs: `endpoints`, `endpoints_env` (the value for `GRAPHFLEET_ENDPOINTS`), `service_name`,
    `namespace`."""

    endpoints: pulumi.Output[list[str]]
    endpoints_env: pulumi.Output[str]
    service_name: pulumi.Output[str]
    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: GraphDataServiceArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        # Fixed names: a replacement must delete first, or the new object collides with the old.
        child = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        svc = service_manifest(args)
        service = k8s.core.v1.Service(f"{name}-headless", metadata=svc["metadata"], spec=svc["spec"],
                                      opts=child)
        sts = statefulset_manifest(args)
        # The provider waits for every pod to be ready; the annotation and customTimeouts (which
        # the provider prefers) carry the same budget.
        wait = f"{await_timeout_seconds(args.spec)}s"
        statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-servers", metadata=sts["metadata"], spec=sts["spec"],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[service], custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait))))
        pdb = pdb_manifest(args)
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata=pdb["metadata"], spec=pdb["spec"],
                                          opts=child)
        policy = network_policy_manifest(args)
        k8s.networking.v1.NetworkPolicy(f"{name}-ingress", metadata=policy["metadata"], spec=policy["spec"],
                                        opts=child)

        fleet = FleetNames.of(args)
        spec = args.spec
        # Derived from the StatefulSet's output so the endpoints resolve only once it is ready.
        self.endpoints = statefulset.metadata.apply(lambda _: endpoints(fleet, spec.replicas, spec.port))
        self.endpoints_env = self.endpoints.apply(",".join)
        self.service_name = service.metadata.apply(lambda m: m.name or fleet.service)
        self.namespace = service.metadata.apply(lambda m: m.namespace or fleet.namespace)
        self.register_outputs({
            "endpoints": self.endpoints,
            "endpoints_env": self.endpoints_env,
            "service_name": self.service_name,
            "namespace": self.namespace,
        })
