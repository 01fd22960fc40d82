"""Log links and progress messages: plain functions over a fleet's server states."""

from __future__ import annotations

import pytest

from flyte_agent import log_links, progress
from flyte_agent.log_links import LogTemplate
from flyte_agent.provisioner import Provision, ServerPhase, ServerState
from flyte_agent.settings import Settings, SettingsError
from infra.spec import DataServiceSpec

PROVISION = Provision(name="gf-run1-n0-abc", spec=DataServiceSpec(graph_uri="s3://graphs/x", partitions=2),
                      owner="proj/dev", execution="proj/dev/run1/n0", created_at=0.0)
GRAFANA = LogTemplate(displayName="Grafana", templateUris=[
    'https://grafana/explore?q={namespace="{{ .namespace }}",pod="{{.podName}}",'
    'container="{{ $containerName }}"}&run={{ .executionName }}'])


def server(ordinal: int, phase: ServerPhase, reason: str = "", **kw: object) -> ServerState:
    return ServerState(ordinal=ordinal, endpoint=f"10.0.0.{ordinal}:50051", phase=phase, reason=reason,
                       restarts=1 if reason else 0, **kw)  # type: ignore[arg-type]


def test_template_variables_are_filled_as_flyte_fills_them() -> None:
    # Case-insensitive, `.` or `$`, spaces optional (flyteplugins tasklog/template.go).
    values = {"podName": "p-0", "namespace": "ns"}
    assert log_links.render("{{ .PODNAME }}/{{$namespace}}/{{.podName}}", values) == "p-0/ns/p-0"
    # A variable without a value stays as written, as in Flyte.
    assert log_links.render("{{ .podName }}/{{ .hostname }}", values) == "p-0/{{ .hostname }}"


def test_cluster_links_one_per_server_and_template() -> None:
    servers = [server(i, ServerPhase.SERVING, pod=f"gf-x-{i}", namespace="graph-services",
                      container="graph-engine") for i in range(2)]
    links = log_links.server_links(PROVISION, servers, [GRAFANA])
    assert [link.name for link in links] == ["server 0 (10.0.0.0:50051): Grafana",
                                             "server 1 (10.0.0.1:50051): Grafana"]
    assert links[1].uri == ('https://grafana/explore?q={namespace="graph-services",pod="gf-x-1",'
                            'container="graph-engine"}&run=run1')


def test_local_links_are_files(tmp_path) -> None:
    log = tmp_path / "server-0.log"
    links = log_links.server_links(PROVISION, [server(0, ServerPhase.LOADING, log_path=str(log))], [GRAFANA])
    assert [(link.name, link.uri) for link in links] == [("server 0 (10.0.0.0:50051)", log.as_uri())]


def test_operation_link_names_the_connector_replica() -> None:
    [link] = log_links.operation_links(PROVISION, [GRAFANA], "graphfleet-connector-7d9-x2", "graphfleet",
                                       "connector")
    assert link.name == "pulumi operation (graphfleet-connector-7d9-x2): Grafana"
    assert 'pod="graphfleet-connector-7d9-x2"' in link.uri and 'container="connector"' in link.uri


def test_templates_come_from_settings_and_unknown_variables_are_refused() -> None:
    value = '[{"displayName": "K8s", "templateUris": ["https://dash/#/log/{{ .namespace }}/{{ .podName }}"]}]'
    settings = Settings.from_env({"GRAPHFLEET_LOG_TEMPLATES": value})
    assert settings.log_templates[0].displayName == "K8s"
    bad = '[{"displayName": "K8s", "templateUris": ["https://dash/{{ .podUID }}"]}]'
    with pytest.raises(SettingsError, match=r"GRAPHFLEET_LOG_TEMPLATES.*podUID"):
        Settings.from_env({"GRAPHFLEET_LOG_TEMPLATES": bad})


def test_progress_says_what_the_servers_are_doing() -> None:
    servers = [server(0, ServerPhase.LOADING), server(1, ServerPhase.LOADING),
               server(2, ServerPhase.SERVING), server(3, ServerPhase.RESTARTING, reason="OOMKilled")]
    assert progress.summary(servers) == "1/4 servers serving, 2 loading partitions, 1 restarting: OOMKilled"
    assert progress.summary(servers[:2]) == "2/2 servers loading partitions"
    assert progress.summary([]) == ""
