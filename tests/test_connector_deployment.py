"""FlyteConnector under mocks: HA Deployment, namespace-scoped RBAC, settings, the Flyte Helm values."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pydantic import ValidationError

from flyte_agent import pod_failures
from flyte_agent.connector import DataServiceConnector, DataServiceTeardownConnector
from flyte_agent.settings import Settings
from infra import policy
from infra.config import load_stack_config, stack_path
from infra.config_fields import parse_duration
from infra.connector_config import ConnectorConfig, ConnectorSecrets, PodFailures, ServiceMonitor
from infra.connector_deployment import FlyteConnector, FlyteConnectorArgs, helm_values, settings_env
from infra.contract import SERVE_MODULES
from infra.image_contract import CONNECTOR_UID, CONNECTOR_USER, IMAGE_PULUMI_HOME
from infra.k8s_schema import validate_manifest
from infra.render import Rendered

SHARED = {"member-graph": ["member-graph-0.member-graph.graphfleet-data.svc.cluster.local:50051"]}


def _args(stack: str = "ltx1", **changes: Any) -> FlyteConnectorArgs:
    config = load_stack_config(stack_path(stack))
    connector = config.connector.model_copy(update=changes) if changes else config.connector
    return FlyteConnectorArgs(connector, config.namespaces.connector, config.namespaces.data_services,
                              config.graph_engine_image, SHARED,
                              client_namespaces=tuple(config.client_namespaces()))


def _render(render_valid: Callable[..., Rendered], args: FlyteConnectorArgs) -> Rendered:
    def program() -> None:
        connector = FlyteConnector("connector", args)
        pulumi.export("endpoint", connector.endpoint)
        pulumi.export("helm", connector.flyte_helm_values)

    return render_valid(program)


def _env(rendered: Rendered) -> dict[str, Any]:
    container = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _settings(rendered: Rendered) -> Settings:
    """What the connector reads from its plain (not Secret-sourced) GRAPHFLEET_* variables."""
    return Settings.from_env({k: v for k, v in _env(rendered).items()
                              if isinstance(v, str) and k.startswith("GRAPHFLEET_")})


def test_the_stacks_pod_failure_thresholds_reach_the_connector(render_valid: Callable[..., Rendered]) -> None:
    """Unset in the stack: the connector's own defaults (one copy, flyte_agent/pod_failures.py); set:
    the connector reads them; every value the stack admits, the connector admits too."""
    def read(thresholds: PodFailures) -> Settings:
        env = settings_env(_args(pod_failures=thresholds))
        return Settings.from_env({e["name"]: e["value"] for e in env if e["name"].startswith("GRAPHFLEET_")})

    unset = _settings(_render(render_valid, _args()))
    assert (unset.unschedulable_seconds, unset.crash_loop_restarts) == (
        pod_failures.UNSCHEDULABLE_SECONDS, pod_failures.CRASH_LOOP_RESTARTS)
    tuned = read(PodFailures.model_validate({"unschedulableGrace": "10m", "crashLoopRestarts": 4}))
    assert (tuned.unschedulable_seconds, tuned.crash_loop_restarts) == (600, 4)
    for low, high in (("0s", 1), ("24h", 100)):
        edge = read(PodFailures.model_validate({"unschedulableGrace": low, "crashLoopRestarts": high}))
        assert (edge.unschedulable_seconds, edge.crash_loop_restarts) == (parse_duration(low), high)
    for bad, field in (({"crashLoopRestarts": 0}, "crashLoopRestarts"), ({"unschedulableGrace": "25h"},
                       "unschedulableGrace"), ({"unschedulableGrace": "5 minutes"}, "unschedulableGrace")):
        with pytest.raises(ValidationError, match=field):
            PodFailures.model_validate(bad)


def test_deployment_serves_the_connector_with_health_probes(render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _args())
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:5] == ["pyflyte", "serve", "connector", "--port", "8000"]
    assert container["command"][-2:] == list(SERVE_MODULES)  # the provisioner is built before serving
    assert container["readinessProbe"]["grpc"] == {"port": 8000}
    assert {p["containerPort"] for p in container["ports"]} == {8000, 9090}
    # Scraped where the metrics are served (flyte_agent/metrics.py: pyflyte's --prometheus_port).
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert container["command"][container["command"].index("--prometheus_port") + 1] == annotations[
        "prometheus.io/port"]
    assert container["image"] == "docker.ltx1.example.com/graphfleet/connector:0.1.0"
    service = rendered.one("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 9090}
    assert rendered.outputs["endpoint"] == "dns:///graphfleet-connector.graphfleet-system.svc.cluster.local:8000"
    assert policy.check(rendered.manifests()) == []


def test_settings_env_is_what_the_connector_reads(render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _args())
    env, settings = _env(rendered), _settings(rendered)
    assert settings.backend == "pulumi"
    assert settings.namespace == "graphfleet-data"
    assert settings.image == "docker.ltx1.example.com/graphfleet/graph-engine:0.1.0"
    assert settings.image_allowlist == ["docker.ltx1.example.com/graphfleet/graph-engine"]
    assert settings.shared_services == SHARED
    assert settings.delete_wait_seconds == 42  # 0.7 of the stack's 1m DeleteTask deadline
    assert settings.watch_executions and settings.consumer_namespace == "{project}-{domain}"
    mapped = _settings(_render(render_valid, _args(consumer_namespace="flyte-{project}",
                                                   watch_executions=False)))
    assert mapped.consumer_namespace == "flyte-{project}" and not mapped.watch_executions
    assert env["PULUMI_BACKEND_URL"] == {"secretKeyRef": {"name": "graphfleet-pulumi-backend", "key": "url"}}
    # The passphrase is a file the CLI reads (PULUMI_CONFIG_PASSPHRASE_FILE), never an env value.
    assert "PULUMI_CONFIG_PASSPHRASE" not in env
    path = env["PULUMI_CONFIG_PASSPHRASE_FILE"]
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "graphfleet-pulumi-backend"
    assert volume["secret"]["items"] == [{"key": "passphrase", "path": path.rsplit("/", 1)[1]}]


def test_a_kms_stack_tells_the_connector_its_secrets_provider(render_valid: Callable[..., Rendered]) -> None:
    secrets = ConnectorSecrets.model_validate({"backendUrl": {"name": "pulumi", "key": "url"},
                                               "secretsProvider": "awskms://alias/graphfleet"})
    kms = _render(render_valid, _args(secrets=secrets))
    assert _settings(kms).secrets_provider == "awskms://alias/graphfleet"
    assert not {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"} & set(_env(kms))
    assert _settings(_render(render_valid, _args())).secrets_provider is None  # passphrase


def test_rbac_is_exactly_what_provisioning_needs(render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _args())
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    [role] = [r for r in rendered.of_kind("Role") if r["metadata"]["namespace"] == "graphfleet-data"]
    granted = {(r, tuple(rule["verbs"])) for rule in role["rules"] for r in rule["resources"]}
    full = ("get", "list", "watch", "create", "update", "patch", "delete")
    read = ("get", "list", "watch")
    # pulumi-kubernetes' await logic watches the Events of what it creates (both Event APIs).
    assert granted == {("statefulsets", full), ("services", full), ("poddisruptionbudgets", full),
                       ("networkpolicies", full), ("pods", read), ("endpoints", read), ("events", read),
                       ("pods/log", ("get",))}
    groups = {g for rule in role["rules"] if "events" in rule["resources"] for g in rule["apiGroups"]}
    assert groups == {"", "events.k8s.io"}
    [binding] = [b for b in rendered.of_kind("RoleBinding")
                 if b["metadata"]["namespace"] == "graphfleet-data"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "graphfleet-connector",
                                    "namespace": "graphfleet-system"}]
    # Elsewhere only `get flyteworkflows`, where graph clients (Flyte executions) run: gc follows each
    # holder's execution (flyte_agent/executions.py).
    others = [r for r in rendered.of_kind("Role") if r is not role]
    config = load_stack_config(stack_path("ltx1"))
    expected = sorted(set(config.client_namespaces()) - {"graphfleet-system", "graphfleet-data"})
    assert sorted(r["metadata"]["namespace"] for r in others) == expected and expected
    assert set(config.team_namespaces()) <= set(expected)
    assert all(r["rules"] == [{"apiGroups": ["flyte.lyft.com"], "resources": ["flyteworkflows"],
                               "verbs": ["get"]}] for r in others)
    bound = {b["metadata"]["namespace"]: b for b in rendered.of_kind("RoleBinding") if b is not binding}
    assert sorted(bound) == expected
    assert all(b["subjects"] == binding["subjects"]
               and b["roleRef"]["name"] == "graphfleet-connector-consumers" for b in bound.values())


def test_policy_flags_wildcards_secrets_and_cluster_roles(render_valid: Callable[..., Rendered]) -> None:
    manifests = _render(render_valid, _args()).manifests()
    role = next(m for m in manifests
                if m["kind"] == "Role" and m["metadata"]["namespace"] == "graphfleet-data")
    added = len(role["rules"])
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]})
    manifests.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                      "metadata": {"name": "too-much"}, "rules": []})
    found = sorted(str(v) for v in policy.check(manifests))
    assert found == [
        "rbac-scope: ClusterRole/too-much: ClusterRole grants cluster-wide access; use a Role in the "
        "namespace",
        f"rbac-scope: Role/graphfleet-data/graphfleet-connector: rules[{added}] grants access to every "
        "Secret; name them in resourceNames",
        f"rbac-scope: Role/graphfleet-data/graphfleet-connector: rules[{added}].verbs has a wildcard '*'",
    ]


def test_helm_values_route_both_task_types_and_keep_the_charts_plugins(
        render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _args("lva1"))
    values = {chart: yaml.safe_load(text) for chart, text in rendered.outputs["helm"].items()}
    core = values["flyte-core"]["configmap"]["enabled_plugins"]
    binary = values["flyte-binary"]
    assert binary["enabled_plugins"]["tasks"] == core["tasks"]
    assert binary["configuration"]["inline"]["plugins"] == core["plugins"]
    plugins = core["tasks"]["task-plugins"]
    # Helm replaces lists: the chart's defaults (flyte-core/flyte-binary v1.16.0 values.yaml) stay,
    # and PyTorchJobs get their plugin instead of silently running as plain pods.
    assert plugins["enabled-plugins"][:5] == ["container", "sidecar", "k8s-array", "connector-service",
                                              "echo"]
    assert "pytorch" in plugins["enabled-plugins"]
    assert plugins["default-for-task-types"]["pytorch"] == "pytorch"
    assert plugins["default-for-task-types"]["container_array"] == "k8s-array"
    served = {c().task_category.name for c in (DataServiceConnector, DataServiceTeardownConnector)}
    assert len(served) == 2
    for task_type in served:
        assert plugins["default-for-task-types"][task_type] == "connector-service"
    service = core["plugins"]["connector-service"]
    assert service["connectorForTaskTypes"] == {t: "graphfleet" for t in served}
    assert service["connectors"]["graphfleet"]["timeouts"] == {"CreateTask": "20s", "GetTask": "10s",
                                                               "DeleteTask": "30s"}
    # Nothing is left in the connector's namespace for propeller to mount (it could not).
    assert not rendered.of_kind("ConfigMap")


def test_plugins_the_cluster_added_are_kept() -> None:
    args = _args(flyte_plugins=["spark", "pytorch"])
    enabled = helm_values(args)["flyte-core"]["configmap"]["enabled_plugins"]["tasks"]["task-plugins"]
    assert enabled["enabled-plugins"] == ["container", "sidecar", "k8s-array", "connector-service", "echo",
                                          "spark", "pytorch"]


def test_only_propeller_and_prometheus_reach_the_connector(render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _args())
    (policy_,) = rendered.of_kind("NetworkPolicy")
    assert policy_["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "graphfleet-connector"}
    rules = [(r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
              [p["port"] for p in r["ports"]]) for r in policy_["spec"]["ingress"]]
    assert rules == [("flyte", [8000]), ("monitoring", [9090])]


def test_autoscaling_renders_an_hpa(render_valid: Callable[..., Rendered]) -> None:
    rendered = _render(render_valid, _args("lva1"))
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    # The HPA owns .spec.replicas: a declared value would be re-applied by every `up`, fighting it.
    assert "replicas" not in rendered.one("Deployment")["spec"]


def test_pod_runs_as_the_image_user_with_its_plugins(render_valid: Callable[..., Rendered]) -> None:
    pod = _render(render_valid, _args()).one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == CONNECTOR_UID >= 10000
    env = _env_of(pod["containers"][0])
    assert env["USER"] == CONNECTOR_USER
    # PULUMI_HOME is writable (the CLI writes workspaces and logs there) and its plugins are the image's.
    (init,) = pod["initContainers"]
    init_env = _env_of(init)
    assert init_env["PULUMI_HOME"] == env["PULUMI_HOME"]
    assert init_env["IMAGE_PLUGINS"] == f"{IMAGE_PULUMI_HOME}/plugins"
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert any(env["PULUMI_HOME"].startswith(m + "/") for m in mounts)
    assert init["image"] == pod["containers"][0]["image"]


def test_init_container_links_the_image_plugins(tmp_path: Path,
                                                render_valid: Callable[..., Rendered]) -> None:
    """Run the init container's command: the CLI then finds `$PULUMI_HOME/plugins/resource-kubernetes-v*`."""
    pod = _render(render_valid, _args()).one("Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    image_plugins = tmp_path / "image" / "plugins" / "resource-kubernetes-v4.32.0"
    image_plugins.mkdir(parents=True)
    home = tmp_path / "work" / ".pulumi"
    subprocess.run(init["command"], env={"PATH": "/usr/bin:/bin", "PULUMI_HOME": str(home),
                                         "IMAGE_PLUGINS": str(tmp_path / "image" / "plugins")},
                   check=True, timeout=30)
    assert (home / "plugins" / "resource-kubernetes-v4.32.0").is_dir()
    # Idempotent: a restarted pod keeps its volume and runs it again.
    subprocess.run(init["command"], env={"PATH": "/usr/bin:/bin", "PULUMI_HOME": str(home),
                                         "IMAGE_PLUGINS": str(tmp_path / "image" / "plugins")},
                   check=True, timeout=30)
    assert sorted(p.name for p in (home / "plugins").iterdir()) == ["resource-kubernetes-v4.32.0"]


def test_bad_args_are_refused_before_anything() -> None:
    with pytest.raises(ValueError, match="FlyteConnectorArgs.data_namespace: must differ"):
        args = _args()
        FlyteConnectorArgs(args.config, "same", "same", args.default_image)
    with pytest.raises(ValueError, match="FlyteConnectorArgs.default_image: image 'docker.io/x/y:1' is not"):
        FlyteConnectorArgs(_args().config, "a", "b", "docker.io/x/y:1")
    with pytest.raises(ValueError, match="must be at least 2"):
        ConnectorConfig.model_validate({**_args().config.model_dump(), "replicas": 1})


def test_tls_option_serves_grpc_over_the_mounted_certificate(render_valid: Callable[..., Rendered]) -> None:
    plain = _render(render_valid, _args())
    assert not _settings(plain).tls_dir
    rendered = _render(render_valid, _args(tls_secret="graphfleet-connector-tls"))
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    tls_dir = _settings(rendered).tls_dir
    assert tls_dir is not None
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(tls_dir)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "graphfleet-connector-tls"
    # The kubelet's gRPC probe is plaintext: a TLS server is probed by TCP.
    assert container["readinessProbe"].get("tcpSocket") == {"port": 8000}
    values = yaml.safe_load(rendered.outputs["helm"]["flyte-core"])
    service = values["configmap"]["enabled_plugins"]["plugins"]["connector-service"]
    assert service["connectors"]["graphfleet"]["insecure"] is False


def test_a_service_monitor_option_scrapes_the_metrics_port_beside_the_annotations(
        render_valid: Callable[..., Rendered]) -> None:
    assert _render(render_valid, _args()).of_kind("ServiceMonitor") == []  # off unless asked for
    monitor_config = ServiceMonitor.model_validate({"labels": {"release": "kube-prometheus-stack"},
                                                    "interval": "15s"})
    rendered = _render(render_valid, _args(service_monitor=monitor_config))  # schema: the vendored CRD
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert validate_manifest(monitor) == []
    # It selects the connector's Service and scrapes its port named like the container's metrics port.
    service = rendered.one("Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    matched = monitor["spec"]["selector"]["matchLabels"]
    assert matched.items() <= service["metadata"]["labels"].items()
    [endpoint_] = monitor["spec"]["endpoints"]
    assert endpoint_ == {"port": "metrics", "path": "/metrics", "interval": "15s"}
    assert "metrics" in [p["name"] for p in service["spec"]["ports"]]
    # The scrape annotations stay, for a Prometheus without the operator.
    pod = rendered.one("Deployment")["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/scrape"] == "true"
    # The CRD's own rules hold: an interval it does not accept fails the schema, naming the field.
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert any("interval" in e for e in validate_manifest(broken))


def test_the_service_monitor_config_is_typed() -> None:
    with pytest.raises(ValidationError, match="interval"):
        ServiceMonitor.model_validate({"interval": "soon"})
    with pytest.raises(ValidationError, match="scrapeInterval|scrape_interval"):
        ServiceMonitor.model_validate({"scrapeInterval": "30s"})


def test_the_drain_fits_the_grace_period_the_deployment_gives(render_valid: Callable[..., Rendered]) -> None:
    """The drain on SIGTERM assumed Kubernetes' default 30 s while the Deployment gave 60 s: it gave up
    on in-flight operations half-way through the time it had."""
    from flyte_agent import drain

    pod = _render(render_valid, _args()).one("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] - drain.DRAIN_SECONDS == 10  # the time left to exit
