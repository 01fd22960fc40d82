"""`FlyteConnector`: the graphfleet Flyte connector as a highly available Deployment.

`pyflyte serve connector` answers FlytePropeller's CreateTask/GetTask/DeleteTask over gRPC. Every
replica is interchangeable (state lives in the Pulumi state backend, not in memory), so the Service is
headless and propeller's `dns:///` endpoint with round-robin spreads calls over all replicas. The
connector may manage fleets only in the data-service namespace, through a Role granting exactly
the kinds `GraphDataService` declares; it reads no Secret through the API (the kubelet injects
the ones it needs as environment variables).

Manifests are built by plain functions; the component only registers them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from infra import names, object_store
from infra.config import Placement
from infra.config_fields import parse_duration
from infra.connector_config import ConnectorConfig, ObjectStore
from infra.contract import (
    CLIENT_LABEL,
    CONNECTOR_CONTAINER,
    PULUMI_BACKEND_URL_ENV,
    SERVE_MODULES,
    TASK_TYPES,
    env_name,
)
from infra.graph_service import ENGINE_SERVICE_ACCOUNT
from infra.image_contract import (
    CONNECTOR_TERMINATION_GRACE_SECONDS,
    CONNECTOR_UID,
    CONNECTOR_USER,
    IMAGE_PULUMI_HOME,
)
from infra.images import check_image
from infra.pod_security import container_security_context, pod_security_context, secret_file

TYPE_TOKEN = "graphfleet:connector:FlyteConnector"
NAME = "graphfleet-connector"
GRPC_PORT = 8000
METRICS_PORT = 9090
# The flyte-core and flyte-binary charts' default task plugins (flyteorg/flyte v1.16.0
# charts/flyte-core/values.yaml `configmap.enabled_plugins`, charts/flyte-binary/values.yaml
# `enabled_plugins`). Helm merges maps but replaces lists, so values that set `enabled-plugins` must
# repeat these (and any the cluster added, `connector.flytePlugins`) or propeller loses them.
CHART_PLUGINS = ("container", "sidecar", "k8s-array", "connector-service", "echo")
CHART_TASK_TYPES = {"container": "container", "sidecar": "sidecar", "container_array": "k8s-array"}
# The training step's PyTorchJob: without the plugin it silently runs as a plain pod
# (flyteplugins kfoperators/common: PytorchTaskType = "pytorch", the plugin's ID and task type).
TRAINING_PLUGIN = "pytorch"
# The share of DeleteTask's deadline delete() may wait for a destroy (7 s of propeller's default 10 s).
DELETE_WAIT_SHARE = 0.7
WORK_DIR = "/work"
TLS_DIR = "/var/run/secrets/graphfleet/tls"
# Writable (the CLI writes workspaces, logs and caches there); its `plugins` is the image's, linked in.
PULUMI_HOME = f"{WORK_DIR}/.pulumi"
# The Pulumi passphrase, as a file the CLI reads (PULUMI_CONFIG_PASSPHRASE_FILE).
PASSPHRASE_VOLUME, PASSPHRASE_FILE = "pulumi-passphrase", "passphrase"
PASSPHRASE_DIR = "/var/run/secrets/graphfleet/pulumi"

# What provisioning a GraphDataService needs in the data-service namespace, and nothing else.
_FULL = ["get", "list", "watch", "create", "update", "patch", "delete"]
_READ = ["get", "list", "watch"]
RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": _FULL},
    {"apiGroups": [""], "resources": ["services"], "verbs": _FULL},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _FULL},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": _FULL},
    # Pulumi's readiness wait for a StatefulSet watches its pods and the Service's endpoints, and
    # the provider's await logic watches Events of every object it creates, updates or deletes.
    {"apiGroups": [""], "resources": ["pods", "endpoints", "events"], "verbs": _READ},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": _READ},
    # A fleet's FAILED message quotes the crashed server's previous log (flyte_agent/pods.py).
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


@dataclass(frozen=True)
class FlyteConnectorArgs:
    config: ConnectorConfig
    namespace: str                     # where the connector runs
    data_namespace: str                # where it creates fleets
    default_image: str                 # graph-engine image when a task names none
    # Shared services' endpoints by name, for tasks that `reuse` one (GRAPHFLEET_SHARED_SERVICES):
    # deterministic DNS names, known before anything runs, so the connector never waits for a graph
    # to load (`infra.graph_service.endpoints`).
    shared_services: Mapping[str, list[str]] = field(default_factory=dict)
    # Every ephemeral fleet's pods: the stack's graph-service placement, environment and account.
    placement: Placement = field(default_factory=Placement)
    engine_env: Mapping[str, str] = field(default_factory=dict)
    # Where graphs are read, by the connector (meta.json) and every fleet alike.
    object_store: ObjectStore = field(default_factory=ObjectStore)
    # Namespaces whose graph clients every fleet admits (its NetworkPolicy).
    client_namespaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names.check_label(self.namespace, "FlyteConnectorArgs.namespace")
        names.check_label(self.data_namespace, "FlyteConnectorArgs.data_namespace")
        if self.namespace == self.data_namespace:
            raise ValueError("FlyteConnectorArgs.data_namespace: must differ from namespace, or the "
                             "connector's Role would let it rewrite its own Service")
        try:
            check_image(self.default_image, self.config.image_allow_list)
        except ValueError as exc:
            raise ValueError(f"FlyteConnectorArgs.default_image: {exc}") from None


# prometheus-operator's ServiceMonitor, vendored in infra/crds (v0.85.0).
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
# The de-facto scrape annotations (Prometheus' kubernetes_sd example relabelling, the prometheus
# community Helm chart's default pod job): the connector's graphfleet_* and flyte_connector_* metrics.
SCRAPE_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                      "prometheus.io/path": "/metrics"}


def labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "graphfleet",
            "app.kubernetes.io/managed-by": "graphfleet"}


def selector() -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME}


def endpoint(namespace: str) -> str:
    """What propeller dials: gRPC DNS resolution over the headless Service's pod addresses."""
    return f"dns:///{NAME}.{namespace}.svc.cluster.local:{GRPC_PORT}"


def _meta(namespace: str, name: str = NAME) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels()}


def service_account_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    # The token is mounted: the Pulumi Kubernetes provider talks to the API as this account.
    metadata = _meta(args.namespace)
    if args.object_store.connector_identity is not None:
        metadata["annotations"] = dict(args.object_store.connector_identity.annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata,
            "automountServiceAccountToken": True}


def role_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(args.data_namespace), "rules": RBAC_RULES}


# gc follows each holder's Flyte execution, its FlyteWorkflow (flyte_agent/executions.py): renews the
# fleet while it runs, releases it once aborted. Only `get flyteworkflows`, only where graph clients run.
EXECUTION_RULES: list[dict[str, Any]] = [{"apiGroups": ["flyte.lyft.com"], "resources": ["flyteworkflows"],
                                          "verbs": ["get"]}]
# The Roles' deployed name ("consumers" was this concept's old name): renaming it would replace them.
EXECUTIONS_ROLE = f"{NAME}-consumers"


def execution_namespaces(args: FlyteConnectorArgs) -> list[str]:
    """The graph clients' namespaces (the teams' Flyte project-domain ones, training) where the
    connector reads executions' FlyteWorkflows; not its own, nor the fleets'."""
    return sorted(set(args.client_namespaces) - {args.namespace, args.data_namespace})


def execution_rbac_manifests(args: FlyteConnectorArgs) -> list[dict[str, Any]]:
    """A Role and RoleBinding in each of `execution_namespaces`: get flyteworkflows, nothing else."""
    out = []
    for namespace in execution_namespaces(args):
        meta = _meta(namespace, EXECUTIONS_ROLE)
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
                    "rules": EXECUTION_RULES})
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                "name": EXECUTIONS_ROLE},
                    "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": args.namespace}]})
    return out


def role_binding_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": _meta(args.data_namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": args.namespace}],
    }


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def settings_env(args: FlyteConnectorArgs) -> list[dict[str, Any]]:
    """The connector's settings (`flyte_agent.settings`), one variable each."""
    config = args.config
    values = {
        "backend": "pulumi",
        "namespace": args.data_namespace,
        "image": args.default_image,
        "image_allowlist": ",".join(config.image_allow_list),
        "max_concurrent_operations": str(config.max_concurrent_operations),
        "shared_services": json.dumps(dict(args.shared_services), sort_keys=True),
        "node_selector": json.dumps(dict(args.placement.node_selector), sort_keys=True),
        "tolerations": json.dumps(args.placement.model_dump(mode="json", by_alias=True,
                                                            exclude_none=True)["tolerations"]),
        "engine_env": json.dumps(dict(args.engine_env), sort_keys=True),
        "engine_service_account": ENGINE_SERVICE_ACCOUNT,
        "object_store": args.object_store.model_dump_json(by_alias=True, exclude_none=True),
        "client_namespaces": ",".join(args.client_namespaces) or None,
        "watch_executions": None if config.watch_executions is None else str(config.watch_executions).lower(),
        "consumer_namespace": config.consumer_namespace,
        "tls_dir": TLS_DIR if config.tls_secret else None,
        "secrets_provider": config.secrets.secrets_provider,
        # delete() must answer before propeller's DeleteTask deadline, with room for the call itself.
        "delete_wait_seconds": f"{DELETE_WAIT_SHARE * parse_duration(config.timeouts.delete_task):g}",
        "unschedulable_seconds": (None if config.pod_failures.unschedulable_grace is None
                                  else f"{parse_duration(config.pod_failures.unschedulable_grace):g}"),
        "crash_loop_restarts": (None if config.pod_failures.crash_loop_restarts is None
                                else str(config.pod_failures.crash_loop_restarts)),
    }
    return [{"name": env_name(key), "value": value} for key, value in values.items() if value is not None]


def secret_env(args: FlyteConnectorArgs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(`env`, `envFrom`) that bring the Pulumi state backend and cloud credentials in from Secrets.

    The passphrase is a file (PULUMI_CONFIG_PASSPHRASE_FILE, which the CLI reads): a file does not
    show in the process environment, `/proc/<pid>/environ` or a crash dump. The state backend's URL stays an
    environment variable: the CLI reads it from PULUMI_BACKEND_URL only.
    """
    secrets = args.config.secrets
    url = secrets.backend_url
    env = [_secret_env(PULUMI_BACKEND_URL_ENV, url.name, url.key)]
    # With KMS instead, the provisioner is told the provider URL (GRAPHFLEET_SECRETS_PROVIDER).
    if secrets.passphrase is not None:
        env.append({"name": "PULUMI_CONFIG_PASSPHRASE_FILE", "value": f"{PASSPHRASE_DIR}/{PASSPHRASE_FILE}"})
    env_from = ([{"secretRef": {"name": secrets.aws_credentials}}] if secrets.aws_credentials else [])
    return env, env_from


def passphrase_volumes(args: FlyteConnectorArgs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(`volumes`, `volumeMounts`) of the passphrase file; empty with a KMS secrets provider."""
    ref = args.config.secrets.passphrase
    if ref is None:
        return [], []
    volume, mount = secret_file(PASSPHRASE_VOLUME, ref.name, PASSPHRASE_DIR,
                                [{"key": ref.key, "path": PASSPHRASE_FILE}])
    return [volume], [mount]


def runtime_env() -> list[dict[str, Any]]:
    """The read-only root filesystem leaves one writable place, the `work` volume: HOME, TMPDIR and
    PULUMI_HOME live there. USER backs up the image's passwd entry for the CLI's user lookup."""
    return [{"name": "HOME", "value": WORK_DIR}, {"name": "TMPDIR", "value": WORK_DIR},
            {"name": "PULUMI_HOME", "value": PULUMI_HOME}, {"name": "USER", "value": CONNECTOR_USER}]


def pulumi_home_init_container(image: str) -> dict[str, Any]:
    """Links the image's installed plugins into the writable PULUMI_HOME before the connector starts,
    so the CLI finds the pulumi-kubernetes plugin at `$PULUMI_HOME/plugins` and never downloads it."""
    return {
        "name": "pulumi-home",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c",
                    'mkdir -p "$PULUMI_HOME" && ln -sfn "$IMAGE_PLUGINS" "$PULUMI_HOME/plugins"'],
        "env": [{"name": "PULUMI_HOME", "value": PULUMI_HOME},
                {"name": "IMAGE_PLUGINS", "value": f"{IMAGE_PULUMI_HOME}/plugins"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
    }


def deployment_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    config = args.config
    env, env_from = secret_env(args)
    passphrase_volume, passphrase_mount = passphrase_volumes(args)
    # The kubelet's gRPC probe speaks plaintext only: with TLS, probe the port's TCP accept instead.
    check = {"tcpSocket": {"port": GRPC_PORT}} if config.tls_secret else {"grpc": {"port": GRPC_PORT}}
    grpc_probe = {**check, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
    tls = [secret_file("tls", config.tls_secret, TLS_DIR)] if config.tls_secret else []
    container: dict[str, Any] = {
        "name": CONNECTOR_CONTAINER,
        "image": config.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["pyflyte", "serve", "connector", "--port", str(GRPC_PORT),
                    "--prometheus_port", str(METRICS_PORT), *SERVE_MODULES],
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": [*settings_env(args), *env, *runtime_env(), *object_store.env(args.object_store)],
        "readinessProbe": grpc_probe,
        "livenessProbe": {**grpc_probe, "periodSeconds": 20, "initialDelaySeconds": 10},
        "resources": {"requests": {"cpu": config.cpu, "memory": config.memory},
                      "limits": {"cpu": config.cpu_limit, "memory": config.memory_limit}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}, *passphrase_mount,
                         *object_store.volume_mounts(args.object_store),
                         *(mount for _, mount in tls)],
    }
    if env_from:
        container["envFrom"] = env_from
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector()},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            # A graph client: before READY the provisioner health-checks the fleet's endpoints,
            # and the fleet's NetworkPolicy admits only labelled pods.
            "metadata": {"labels": {**labels(), CLIENT_LABEL: "true"}, "annotations": SCRAPE_ANNOTATIONS},
            "spec": {
                "serviceAccountName": NAME,
                "initContainers": [pulumi_home_init_container(config.image)],
                "containers": [container],
                "securityContext": pod_security_context(CONNECTOR_UID),
                "enableServiceLinks": False,
                # A `pulumi up` in flight is bounded by the provisioner; give it time to stop cleanly.
                "terminationGracePeriodSeconds": CONNECTOR_TERMINATION_GRACE_SECONDS,
                "volumes": [{"name": "work", "emptyDir": {"sizeLimit": "4Gi"}}, *passphrase_volume,
                            *object_store.volumes(args.object_store), *(volume for volume, _ in tls)],
                "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector()},
                }],
            },
        },
    }
    # With an autoscaler the HPA owns .spec.replicas: declaring it too makes every `up` fight the
    # HPA over the field (server-side apply conflict) and reset the scale.
    if config.autoscaling is None:
        spec = {"replicas": config.replicas, **spec}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(args.namespace),
        "spec": spec,
    }


def service_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(args.namespace),
        "spec": {
            # Headless: propeller resolves every ready replica and balances calls round-robin.
            "clusterIP": "None",
            "selector": selector(),
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "kubernetes.io/h2c"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def service_monitor_manifest(args: FlyteConnectorArgs) -> dict[str, Any] | None:
    """prometheus-operator's scrape target for the Service's `metrics` port (infra/crds, v0.85.0), when
    the stack config asks for one."""
    monitor = args.config.service_monitor
    if monitor is None:
        return None
    metadata = {**_meta(args.namespace), "labels": {**monitor.labels, **labels()}}
    return {
        "apiVersion": SERVICE_MONITOR_API, "kind": "ServiceMonitor", "metadata": metadata,
        "spec": {"selector": {"matchLabels": selector()},
                 "namespaceSelector": {"matchNames": [args.namespace]},
                 "endpoints": [{"port": "metrics", "path": SCRAPE_ANNOTATIONS["prometheus.io/path"],
                                "interval": monitor.interval}]},
    }


def pdb_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(args.namespace),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector()}}}


def hpa_manifest(args: FlyteConnectorArgs) -> dict[str, Any] | None:
    scaling = args.config.autoscaling
    if scaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(args.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": scaling.target_cpu_percent}}}],
        },
    }


def task_plugins(args: FlyteConnectorArgs) -> dict[str, Any]:
    """Propeller's `tasks.task-plugins`: the chart's defaults, the cluster's own, ours; nothing dropped."""
    enabled = list(dict.fromkeys([*CHART_PLUGINS, *args.config.flyte_plugins, TRAINING_PLUGIN]))
    return {"enabled-plugins": enabled,
            "default-for-task-types": {**CHART_TASK_TYPES, TRAINING_PLUGIN: TRAINING_PLUGIN,
                                       **{t: "connector-service" for t in TASK_TYPES}}}


def connector_service(args: FlyteConnectorArgs) -> dict[str, Any]:
    """Propeller's `plugins.connector-service`: this connector for graphfleet's task types."""
    timeouts = args.config.timeouts
    deployment = {
        "endpoint": endpoint(args.namespace),
        "insecure": args.config.tls_secret is None,
        "defaultServiceConfig": json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}),
        "timeouts": {"CreateTask": timeouts.create_task, "GetTask": timeouts.get_task,
                     "DeleteTask": timeouts.delete_task},
        # Other calls (metrics, logs) are reads like GetTask.
        "defaultTimeout": timeouts.get_task,
    }
    return {"connectors": {"graphfleet": deployment},
            "connectorForTaskTypes": {t: "graphfleet" for t in TASK_TYPES}}


def helm_values(args: FlyteConnectorArgs) -> dict[str, dict[str, Any]]:
    """What each Flyte chart's values take (`helm upgrade ... -f <these>` after the cluster's own):

    - flyte-core renders `configmap.enabled_plugins` into propeller's `enabled_plugins.yaml`
      (templates/propeller/configmap.yaml), which carries both the plugin list and our connector;
    - flyte-binary renders `enabled_plugins.tasks` into `001-plugins.yaml` and merges
      `configuration.inline` into `100-inline-config.yaml` (templates/configmap.yaml).
    """
    tasks = {"task-plugins": task_plugins(args)}
    plugins = {"connector-service": connector_service(args)}
    return {"flyte-core": {"configmap": {"enabled_plugins": {"tasks": tasks, "plugins": plugins}}},
            "flyte-binary": {"enabled_plugins": {"tasks": tasks},
                             "configuration": {"inline": {"plugins": plugins}}}}


def network_policy_manifest(args: FlyteConnectorArgs) -> dict[str, Any]:
    """gRPC only from propeller's namespace; metrics only from Prometheus' (when set)."""
    config = args.config

    def from_namespace(namespace: str) -> list[dict[str, Any]]:
        return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]

    ingress = [{"from": from_namespace(config.propeller_namespace),
                "ports": [{"protocol": "TCP", "port": GRPC_PORT}]}]
    if config.prometheus_namespace is not None:
        ingress.append({"from": from_namespace(config.prometheus_namespace),
                        "ports": [{"protocol": "TCP", "port": METRICS_PORT}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(args.namespace),
            "spec": {"podSelector": {"matchLabels": selector()}, "policyTypes": ["Ingress"],
                     "ingress": ingress}}


class FlyteConnector(pulumi.ComponentResource):
    """Outputs: `endpoint` (what propeller dials) and `flyte_helm_values` (chart name -> values YAML)."""

    endpoint: pulumi.Output[str]
    flyte_helm_values: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: FlyteConnectorArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        sa = service_account_manifest(args)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=sa["metadata"],
            automount_service_account_token=sa["automountServiceAccountToken"], opts=child)
        role = role_manifest(args)
        k8s.rbac.v1.Role(f"{name}-role", metadata=role["metadata"], rules=role["rules"], opts=child)
        binding = role_binding_manifest(args)
        k8s.rbac.v1.RoleBinding(f"{name}-rolebinding", metadata=binding["metadata"],
                                role_ref=binding["roleRef"], subjects=binding["subjects"], opts=child)
        for manifest in execution_rbac_manifests(args):
            namespace = manifest["metadata"]["namespace"]
            meta = manifest["metadata"]
            # Resource names as deployed: a rename would replace the objects.
            if manifest["kind"] == "Role":
                k8s.rbac.v1.Role(f"{name}-consumers-{namespace}", metadata=meta, rules=manifest["rules"],
                                 opts=child)
            else:
                k8s.rbac.v1.RoleBinding(f"{name}-consumers-binding-{namespace}", metadata=meta,
                                        role_ref=manifest["roleRef"], subjects=manifest["subjects"],
                                        opts=child)
        policy = network_policy_manifest(args)
        k8s.networking.v1.NetworkPolicy(f"{name}-ingress", metadata=policy["metadata"], spec=policy["spec"],
                                        opts=child)
        svc = service_manifest(args)
        service = k8s.core.v1.Service(f"{name}-service", metadata=svc["metadata"], spec=svc["spec"],
                                      opts=child)
        deployment = deployment_manifest(args)
        k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=deployment["metadata"], spec=deployment["spec"],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[account])))
        pdb = pdb_manifest(args)
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata=pdb["metadata"], spec=pdb["spec"],
                                          opts=child)
        monitor = service_monitor_manifest(args)
        if monitor is not None:
            k8s.apiextensions.CustomResource(f"{name}-servicemonitor", api_version=monitor["apiVersion"],
                                             kind=monitor["kind"], metadata=monitor["metadata"],
                                             spec=monitor["spec"], opts=child)
        hpa = hpa_manifest(args)
        if hpa is not None:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(f"{name}-hpa", metadata=hpa["metadata"],
                                                       spec=hpa["spec"], opts=child)
        self.endpoint = service.metadata.apply(lambda _: endpoint(args.namespace))
        self.flyte_helm_values = pulumi.Output.from_input(
            {chart: yaml.safe_dump(values, sort_keys=False) for chart, values in helm_values(args).items()})
        self.register_outputs({"endpoint": self.endpoint, "flyte_helm_values": self.flyte_helm_values})
