"""Connector settings, read from `GRAPHFLEET_*` environment variables (the connector Deployment sets them).

Every field is one variable: `GRAPHFLEET_<FIELD>` in upper case, except `image`, which is
`GRAPHFLEET_DEFAULT_IMAGE`, and `backend_url`, which is `GRAPHFLEET_PULUMI_BACKEND_URL` (else
`PULUMI_BACKEND_URL`). Lists are comma-separated; mappings and `tolerations` are JSON. A bad
value raises `SettingsError` naming the variable and what it should look like.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flyte_agent import pod_failures
from flyte_agent.executions import Executions, make_executions
from flyte_agent.graph_access import check_rules
from flyte_agent.log_links import LogTemplate
from flyte_agent.provisioner import Provisioner
from infra.config import Toleration
from infra.config_fields import EnvName, NamespaceTemplate, Subdomain
from infra.connector_config import (
    MAX_CRASH_LOOP_RESTARTS,
    MAX_UNSCHEDULABLE_SECONDS,
    SECRETS_PROVIDER_URL,
    ObjectStore,
)
from infra.contract import SETTINGS_FALLBACK_ENV, env_name
from infra.images import STACK_ALLOW_LIST, check_allow_list_entry, check_image
from infra.spec import check_labels, describe_error

# Variables holding JSON, with what the value looks like (for the error message).
_JSON = {
    "shared_services": '{"name": ["host:port", ...]}',
    "node_selector": '{"label": "value", ...}',
    "tolerations": '[{"key": "k", "operator": "Exists", "effect": "NoSchedule"}, ...]',
    "engine_env": '{"NAME": "value", ...}',
    "log_templates": '[{"displayName": "Grafana", "templateUris": ["https://.../{{ .podName }}"]}, ...]',
    "object_store": '{"endpoint": "http://...", "credentials": {"name": "secret", "key": "credentials"}}',
    "graph_access": '{"project" or "project/domain": ["s3://bucket/prefix/", ...]}',
}
_ENDPOINT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class SettingsError(ValueError):
    """A GRAPHFLEET_* variable has a bad value; the message names it and the fix."""


class Settings(BaseModel):
    """What one connector replica needs; identical on every replica (they share nothing else)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "pulumi"] = Field(
        "local", description="local: graph-engine subprocesses on loopback; pulumi: Kubernetes fleets")
    namespace: str = Field("graphfleet", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
                           description="Kubernetes namespace the fleets are created in")
    image: str = Field("graphfleet/graph-engine:latest",
                       description="graph-engine image when a task does not name one")
    image_allowlist: list[str] = Field(
        default_factory=list,
        description="repositories a task's image may come from: `registry/repo` allows its pinned tags "
                    "and digests, `registry/path/` every repository under it; empty: only the default image")
    max_concurrent_operations: int = Field(4, ge=1, le=256, description="provisioning operations at once")
    state_dir: Path = Field(Path(tempfile.gettempdir()) / "graphfleet-local",
                            description="local backend: where fleets are recorded (pid files, ports)")
    shared_services: dict[str, list[str]] = Field(
        default_factory=dict,
        description='`reuse` targets, JSON {"name": ["host:port", ...]} from the Datacenter stack outputs')
    graph_access: dict[str, list[str]] = Field(
        default_factory=dict,
        description="graph URI prefixes each project (or project/domain) may serve "
                    "(flyte_agent.graph_access); empty: every graph (a single-team connector)")
    ready_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="local backend: bound on one health probe round")
    # Pulumi backend (flyte_agent.pulumi_provisioner).
    backend_url: str = Field("file://~/.pulumi-graphfleet", description="self-managed Pulumi state backend")
    kubeconfig: str | None = Field(None, description="kubeconfig path or contents; unset = in-cluster")
    pulumi_command: str = Field("pulumi", description="the pulumi CLI executable")
    secrets_provider: str | None = Field(
        None, pattern=SECRETS_PROVIDER_URL,
        description="KMS secrets provider of the fleet stacks (awskms://alias/...); unset: passphrase")
    max_attempts: int = Field(3, ge=1, le=20, description="`pulumi up` attempts per fleet before FAILED")
    retry_backoff_seconds: float = Field(
        20.0, ge=0, le=600, description="wait before the 2nd `pulumi up` attempt, doubled for each later one")
    operation_timeout_seconds: float = Field(1800.0, gt=0, description="bound on up/destroy/refresh")
    command_timeout_seconds: float = Field(60.0, gt=0, description="bound on every other pulumi call")
    delete_wait_seconds: float = Field(
        7.0, gt=0, le=600,
        description="how long delete() waits for a destroy before answering 'in progress'; keep it under "
                    "Propeller's DeleteTask deadline")
    get_wait_seconds: float = Field(
        7.0, gt=0, le=60,
        description="how long a GetTask waits (for a status read or a teardown) before answering RUNNING; "
                    "keep it under Propeller's GetTask deadline (10 s by default)")
    gc_interval_seconds: float = Field(300.0, ge=0, description="expiry sweep period; 0 disables it")
    heartbeat_seconds: float = Field(
        10.0, gt=0, le=300,
        description="how often a replica writes its heartbeat to the state backend; another replica breaks "
                    "its stack locks once 4 beats are missed (flyte_agent.replicas)")
    renew_seconds: float = Field(
        900.0, gt=0, description="while a fleet's holder still runs, gc renews its expiry (or lease) this "
                                 "far ahead; longer than gc_interval_seconds")
    watch_executions: bool = Field(
        True, description="gc follows each holder's Flyte execution (flyte_agent/executions.py): renews its "
                          "fleet while it runs, releases it once aborted or failed; needs the connector in "
                          "the executions' cluster. false: fleets lapse at their expiry")
    consumer_namespace: NamespaceTemplate = Field(
        "{project}-{domain}",
        description="where an execution's FlyteWorkflow lives (FlyteAdmin's namespace_mapping template)")
    check_endpoints: bool = Field(True, description="health-check endpoints before reporting READY")
    # A fleet that cannot start fails early, told from its pods (flyte_agent/pod_failures.py).
    unschedulable_seconds: float = Field(
        pod_failures.UNSCHEDULABLE_SECONDS, ge=0, le=MAX_UNSCHEDULABLE_SECONDS,
        description="how long a fleet's pod may stay Unschedulable before the fleet fails: time for a node "
                    "autoscaler to add a node")
    crash_loop_restarts: int = Field(
        pod_failures.CRASH_LOOP_RESTARTS, ge=1, le=MAX_CRASH_LOOP_RESTARTS,
        description="restarts of a graph-engine container in CrashLoopBackOff before the fleet fails")
    # Every fleet's pods (the Datacenter sets these from the stack, like its shared services).
    node_selector: dict[str, str] = Field(default_factory=dict, description="graph-engine node selector")
    tolerations: list[Toleration] = Field(default_factory=list, description="graph-engine tolerations")
    engine_env: dict[EnvName, str] = Field(
        default_factory=dict, description="graph-engine environment, e.g. AWS_ENDPOINT_URL, AWS_REGION")
    engine_service_account: Subdomain | None = Field(
        None, description="graph-engine service account (e.g. S3 through workload identity)")
    grpc_max_connection_age_seconds: float = Field(
        300.0, ge=10, le=86_400,
        description="the connector's gRPC server closes client connections this old, so propeller's "
                    "dns:/// round robin re-resolves and reaches new replicas")
    tls_dir: Path | None = Field(None, description="folder with tls.crt and tls.key: serve gRPC over TLS")
    client_namespaces: list[str] = Field(
        default_factory=list,
        description="namespaces whose graph-client pods every fleet admits (comma-separated); empty: any")
    object_store: ObjectStore = Field(
        default_factory=ObjectStore,
        description="graph-engine object store: endpoint and mounted credentials (the stack's objectStore)")

    log_templates: list[LogTemplate] = Field(
        default_factory=list,
        description="cluster log links of each server pod and of the connector, Flyte-style templates with "
                    "{{ .podName }}, {{ .namespace }}, {{ .containerName }} (flyte_agent/log_links.py)")

    @field_validator("shared_services")
    @classmethod
    def _endpoints(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, endpoints in value.items():
            if not endpoints:
                raise ValueError(f"shared service {name!r} has no endpoints")
            bad = [e for e in endpoints if not _ENDPOINT.match(e)]
            if bad:
                raise ValueError(f"shared service {name!r}: endpoints must be host:port, got {bad}")
        return value

    @field_validator("graph_access")
    @classmethod
    def _graph_access(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return dict(check_rules(value))

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(value)
        return value

    @field_validator("image_allowlist")
    @classmethod
    def _allow_list(cls, value: list[str]) -> list[str]:
        return [check_allow_list_entry(entry) for entry in value]

    def check_image(self, image: str) -> str:
        """`image` if a task may name it: the default image (checked when the datacenter was
        deployed), or a pinned image the allow-list admits (`infra.images.check_image`)."""
        if image == self.image:
            return image
        return check_image(image, self.image_allowlist,
                           where=f"{env_name('image_allowlist')} (the stack's {STACK_ALLOW_LIST})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for field in cls.model_fields:
            value = environ.get(env_name(field)) or environ.get(SETTINGS_FALLBACK_ENV.get(field, ""))
            if value is None or value == "":
                continue
            raw[field] = _parse(field, value)
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise SettingsError(describe_error(err, "connector settings", key=_env_key)) from err


def _env_key(key: str) -> str:
    """A path part of a validation error: fields by their variable, keys inside a value as they are."""
    return env_name(key) if key in Settings.model_fields else key


def _parse(field: str, value: str) -> Any:
    if field in ("image_allowlist", "client_namespaces"):
        return [item.strip() for item in value.split(",") if item.strip()]
    if field in _JSON:
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise SettingsError(f"{env_name(field)}: not JSON ({err.msg}); expected {_JSON[field]}") from err
    return value


def make_provisioner(settings: Settings) -> Provisioner:
    if settings.backend == "pulumi":
        # Imported only when chosen: it loads all of pulumi_kubernetes (~1.5 s, ~90 MB).
        from flyte_agent.pulumi_provisioner import PulumiProvisioner

        return PulumiProvisioner(settings, executions=executions(settings))
    from flyte_agent.local_provisioner import LocalProvisioner

    return LocalProvisioner(settings, executions=executions(settings))


def executions(settings: Settings) -> Executions | None:
    if not settings.watch_executions:
        return None
    return make_executions(settings.backend, settings.kubeconfig, settings.consumer_namespace)
