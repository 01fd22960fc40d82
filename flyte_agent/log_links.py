"""Flyte `TaskLog` links for a fleet: one per server, and one for the connector running its operation.

Locally a server's link is `file://` to its log file. On a cluster the links come from templates
in the connector's settings (`GRAPHFLEET_LOG_TEMPLATES`, filled from the Datacenter stack config),
written as Flyte's own log-link templates are: `{{ .podName }}`, `{{ .namespace }}`,
`{{ .containerName }}`, `{{ .hostname }}`, `{{ .executionProject }}`, `{{ .executionDomain }}`,
`{{ .executionName }}`, `{{ .nodeID }}` and `{{ .logName }}`. Matching follows flyteplugins'
`tasklog/template.go` (flyteorg/flyte v1.16): case-insensitive, `.` or `$` before the name, spaces
inside the braces allowed, and a variable with no value is left as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from flyteidl.core.execution_pb2 import TaskLog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flyte_agent.provisioner import Provision, ServerState

# The variables graphfleet fills, by their name in Flyte's templates.
VARIABLES = ("podName", "namespace", "containerName", "hostname", "executionProject", "executionDomain",
             "executionName", "nodeID", "logName")
_VARIABLE = re.compile(r"(?i){{\s*[.$](\w+)\s*}}")


class LogTemplate(BaseModel):
    """One log-link kind, shaped like an entry of Flyte's `logs.templates` (`displayName`, `templateUris`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    displayName: str = Field(min_length=1, description="the link's name, e.g. 'Grafana'")  # noqa: N815
    templateUris: list[str] = Field(min_length=1, description="URIs with {{ .podName }} etc.")  # noqa: N815

    @field_validator("templateUris")
    @classmethod
    def _known_variables(cls, uris: list[str]) -> list[str]:
        known = {v.lower() for v in VARIABLES}
        for uri in uris:
            unknown = [m for m in _VARIABLE.findall(uri) if m.lower() not in known]
            if unknown:
                raise ValueError(f"template {uri!r} uses {', '.join(unknown)}; graphfleet fills "
                                 f"{', '.join('{{ .' + v + ' }}' for v in VARIABLES)}")
        return uris


def render(template: str, values: Mapping[str, str]) -> str:
    """`template` with every variable that has a value replaced (case-insensitively, as Flyte does)."""
    lowered = {k.lower(): v for k, v in values.items() if v}

    def one(match: re.Match[str]) -> str:
        return lowered.get(match.group(1).lower(), match.group(0))

    return _VARIABLE.sub(one, template)


def execution_values(provision: Provision) -> dict[str, str]:
    """Template values of the execution that asked for the fleet (`project/domain/name/node`)."""
    parts = provision.execution.split("/", 3)
    if len(parts) != 4:
        return {}
    return dict(zip(("executionProject", "executionDomain", "executionName", "nodeID"), parts, strict=True))


def server_links(provision: Provision, servers: Sequence[ServerState],
                 templates: Sequence[LogTemplate]) -> list[TaskLog]:
    """One link per server: its log file when it has one, else one per template for its pod."""
    links = []
    for server in servers:
        label = f"server {server.ordinal} ({server.endpoint or server.pod})"
        if server.log_path:
            links.append(TaskLog(uri=Path(server.log_path).resolve().as_uri(), name=label,
                                 message_format=TaskLog.UNKNOWN))
            continue
        if not server.pod:
            continue
        values = {**execution_values(provision), "podName": server.pod, "namespace": server.namespace,
                  "containerName": server.container, "logName": label}
        links.extend(_templated(templates, values, f"{label}: "))
    return links


def operation_links(provision: Provision, templates: Sequence[LogTemplate], pod: str, namespace: str,
                    container: str) -> list[TaskLog]:
    """The connector replica whose logs hold the fleet's Pulumi operation (its CLI output)."""
    values = {**execution_values(provision), "podName": pod, "hostname": pod, "namespace": namespace,
              "containerName": container, "logName": "pulumi operation"}
    return _templated(templates, values, f"pulumi operation ({pod}): ")


def _templated(templates: Sequence[LogTemplate], values: Mapping[str, str], prefix: str) -> list[TaskLog]:
    return [TaskLog(uri=render(uri, values), name=prefix + template.displayName,
                    message_format=TaskLog.UNKNOWN)
            for template in templates for uri in template.templateUris]
