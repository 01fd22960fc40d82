"""The task DSL and the connector's pure logic: validation at definition, exact types, names, settings."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.models.core.identifier import (
    Identifier,
    NodeExecutionIdentifier,
    ResourceType,
    TaskExecutionIdentifier,
    WorkflowExecutionIdentifier,
)
from flytekit.models.security import Identity
from flytekit.models.task import TaskExecutionMetadata, TaskTemplate
from flytekit.tools.translator import get_serializable

from flyte_agent import DataServiceConfig, DataServiceReleaseAllTask, DataServiceTask, DataServiceTeardownTask
from flyte_agent.connector import DataServiceTeardownConnector, FleetMeta, TeardownMeta
from flyte_agent.executions import workflow_execution
from flyte_agent.graph_access import GraphAccessDenied, check_graph_access
from flyte_agent.settings import Settings, SettingsError
from flyte_agent.task_request import execution_identity, local_run, merge_inputs, provision_name, resolve_spec
from infra.contract import DATA_SERVICE_TASK_TYPE, TEARDOWN_TASK_TYPE
from infra.names import STATEFULSET_NAME_MAX, check_label
from infra.spec import DataServiceSpec

SETTINGS = SerializationSettings(ImageConfig.auto_default_image(), project="p", domain="d", version="v1")


def template_of(task: DataServiceTask) -> TaskTemplate:
    """What the connector receives: the template after a protobuf round trip."""
    idl = get_serializable(OrderedDict(), SETTINGS, task).template.to_flyte_idl()
    return TaskTemplate.from_flyte_idl(idl)


def test_custom_has_exact_types_and_survives_the_struct_round_trip() -> None:
    config = DataServiceConfig(graph_uri="s3://graphs/cora", replicas=3, partitions=6, cpu="2",
                               labels={"team": "gnn"})
    task = DataServiceTask(name="graph", config=config)
    custom = task.get_custom(SETTINGS)
    assert custom["replicas"] == 3 and type(custom["replicas"]) is int
    assert type(custom["ttl_seconds"]) is int and None not in custom.values()
    template = template_of(task)
    assert template.type == DATA_SERVICE_TASK_TYPE
    assert isinstance(template.custom["replicas"], float)  # what protobuf does to every number
    assert DataServiceSpec.from_custom(template.custom) == config


def test_a_bad_config_fails_at_definition_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"DataServiceTask .graph. config: replicas: .*greater than"):
        DataServiceTask(name="graph", config={"replicas": 0})
    with pytest.raises(ValueError, match=r"config: cpu"):
        DataServiceTask(name="graph", config={"cpu": "lots"})
    with pytest.raises(ValueError, match=r"repliacs: unknown key"):
        DataServiceTask(name="graph", config={"repliacs": 2})


def test_graph_uri_and_replicas_can_come_at_run_time() -> None:
    task = DataServiceTask(name="graph", config={"replicas": 2, "cpu": "2"})
    custom = template_of(task).custom
    assert "graph_uri" not in custom
    assert set(task.python_interface.inputs) == {"graph_uri", "replicas"}
    assert merge_inputs(custom, {"graph_uri": "s3://b/g", "replicas": 0})["replicas"] == 2
    assert merge_inputs(custom, {"graph_uri": "s3://b/g", "replicas": 4})["replicas"] == 4
    with pytest.raises(ValueError, match="graph_uri: no graph given"):
        resolve_spec(custom, {}, Settings(), "p/d")


def test_resolve_spec_checks_images_and_shared_services() -> None:
    settings = Settings(image="reg/ge:1", image_allowlist=["reg/ge", "trusted.io/"],
                        shared_services={"cora": ["ge-0.cora:50051"]})
    assert resolve_spec({"reuse": "cora", "image": "reg/ge:2"}, {}, settings, "p/d").reuse == "cora"
    assert resolve_spec({"reuse": "cora", "image": "trusted.io/x/y:3"}, {}, settings, "p/d").reuse == "cora"
    with pytest.raises(ValueError, match=r"image: 'evil/ge:1' is not allowed .*GRAPHFLEET_IMAGE_ALLOWLIST"):
        resolve_spec({"reuse": "cora", "image": "evil/ge:1"}, {}, settings, "p/d")
    with pytest.raises(ValueError, match=r"reuse: 'citeseer' is not a shared graph service .*known: cora"):
        resolve_spec({"reuse": "citeseer"}, {}, settings, "p/d")


def test_provision_names_are_retry_independent_valid_and_distinct() -> None:
    name = provision_name("proj", "dev", "f3a1b2c4d5e6f7a8b9c0", "n0")
    assert name == provision_name("proj", "dev", "f3a1b2c4d5e6f7a8b9c0", "n0")
    assert name != provision_name("proj", "dev", "f3a1b2c4d5e6f7a8b9c1", "n0")
    assert name != provision_name("proj", "prod", "f3a1b2c4d5e6f7a8b9c0", "n0")
    long = provision_name("p", "d", "X" * 200, "dn0.sub_node-3")
    for candidate in (name, long):
        check_label(candidate, "name")
        assert len(candidate) <= STATEFULSET_NAME_MAX


def test_fleet_meta_is_json_round_trippable() -> None:
    meta = FleetMeta(name="gf-x", spec={"graph_uri": "/g", "replicas": 2, "partitions": 2}, owner="p/d",
                     execution="p/d/e/n0", created_at=12.5)
    again = FleetMeta.decode(meta.encode())
    assert again == meta
    assert again.provision().spec.replicas == 2


def test_teardown_task_type_and_interface() -> None:
    task = DataServiceTeardownTask(name="release")
    template = template_of(task)
    assert template.type == TEARDOWN_TASK_TYPE
    assert set(task.python_interface.inputs) == {"service"}


def execution_metadata(run: str, node: str) -> TaskExecutionMetadata:
    wf = WorkflowExecutionIdentifier(project="proj", domain="dev", name=run)
    return TaskExecutionMetadata(task_execution_id=TaskExecutionIdentifier(
        task_id=Identifier(ResourceType.TASK, "proj", "dev", "t", "v1"), retry_attempt=0,
        node_execution_id=NodeExecutionIdentifier(node_id=node, execution_id=wf)),
        namespace="", labels={}, annotations={}, k8s_service_account="", environment_variables={},
        identity=Identity())


def test_release_all_targets_the_execution_its_fleets_were_recorded_under() -> None:
    task = DataServiceReleaseAllTask(name="release_all")
    template = template_of(task)
    assert template.type == TEARDOWN_TASK_TYPE and task.python_interface.inputs == {}
    teardown = DataServiceTeardownConnector()

    # On a cluster: the workflow execution of its own metadata, whichever node provisioned.
    _, _, provisioned = execution_identity(execution_metadata("run7", "n0"), "graph")
    meta = teardown.create(template, "", task_execution_metadata=execution_metadata("run7", "fn0-n0"))
    assert meta == TeardownMeta(execution="proj/dev/run7", owner="proj/dev")
    assert workflow_execution(provisioned) == meta.execution

    # Locally there is no metadata: the process is the execution, for both tasks.
    _, owner, provisioned = execution_identity(None, "graph")
    _, _, again = execution_identity(None, "graph")
    assert provisioned != again  # every local create is a fleet of its own
    meta = teardown.create(template, "")
    assert meta == TeardownMeta(execution=f"local/local/{local_run()}", owner="local/local")
    assert workflow_execution(provisioned) == workflow_execution(again) == meta.execution
    assert owner == "local/local"

    # The by-name teardown is unchanged.
    release = template_of(DataServiceTeardownTask(name="release"))
    assert teardown.create(release, "").execution == ""


def test_only_a_whole_task_execution_identity_has_a_workflow_execution() -> None:
    assert workflow_execution("p/d/run/n0") == "p/d/run"
    assert workflow_execution("p/d/run/dn0/n1") == "p/d/run"
    for partial in ("", "p/d/run", "p//run/n0", "local/graph/abc"):
        assert workflow_execution(partial) == ""


def test_settings_from_env_name_the_variable() -> None:
    settings = Settings.from_env({"GRAPHFLEET_BACKEND": "pulumi", "GRAPHFLEET_IMAGE_ALLOWLIST": "a/b, c/",
                                  "GRAPHFLEET_SHARED_SERVICES": '{"cora": ["h:1"]}',
                                  "GRAPHFLEET_MAX_CONCURRENT_OPERATIONS": "8"})
    assert (settings.backend, settings.image_allowlist, settings.max_concurrent_operations) == (
        "pulumi", ["a/b", "c/"], 8)
    with pytest.raises(SettingsError, match="GRAPHFLEET_BACKEND: Input should be 'local' or 'pulumi'"):
        Settings.from_env({"GRAPHFLEET_BACKEND": "k8s"})
    with pytest.raises(SettingsError, match="GRAPHFLEET_MAX_CONCURRENT_OPERATIONS"):
        Settings.from_env({"GRAPHFLEET_MAX_CONCURRENT_OPERATIONS": "0"})
    with pytest.raises(SettingsError, match="GRAPHFLEET_SHARED_SERVICES: not JSON"):
        Settings.from_env({"GRAPHFLEET_SHARED_SERVICES": "cora=h:1"})


@pytest.mark.parametrize(("env", "message"), [
    ({"GRAPHFLEET_NODE_SELECTOR": "pool=cpu"},
     'GRAPHFLEET_NODE_SELECTOR: not JSON (Expecting value); expected {"label": "value", ...}'),
    ({"GRAPHFLEET_NODE_SELECTOR": '{"bad key!": "x"}'},
     "connector settings: GRAPHFLEET_NODE_SELECTOR: label key 'bad key!' is not a valid Kubernetes "
     "label key"),
    ({"GRAPHFLEET_TOLERATIONS": '[{"key": "pool", "operator": "Exists", "value": "cpu"}]'},
     "connector settings: GRAPHFLEET_TOLERATIONS[0]: operator Exists takes no value; remove value or use "
     "operator Equal"),
    ({"GRAPHFLEET_TOLERATIONS": '[{"key": "pool", "effect": "NoRun"}]'},
     "connector settings: GRAPHFLEET_TOLERATIONS[0].effect: Input should be 'NoSchedule', "
     "'PreferNoSchedule' or 'NoExecute'"),
    ({"GRAPHFLEET_ENGINE_ENV": '{"AWS-REGION": "x"}'},
     "connector settings: GRAPHFLEET_ENGINE_ENV.AWS-REGION[key]: 'AWS-REGION' is not an environment variable "
     "name"),
    ({"GRAPHFLEET_ENGINE_SERVICE_ACCOUNT": "Graph_Reader"},
     "connector settings: GRAPHFLEET_ENGINE_SERVICE_ACCOUNT: 'Graph_Reader' is not a DNS-1123 subdomain"),
], ids=["selector-not-json", "selector-bad-key", "toleration-exists-value", "toleration-effect",
        "env-name", "service-account"])
def test_fleet_pod_settings_name_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(message), str(err.value)


def test_graph_access_rules_pick_the_most_specific_and_refuse_escapes() -> None:
    rules = {"proj": ["s3://graphs/proj/"], "proj/prod": ["s3://graphs/prod/"]}
    check_graph_access("s3://graphs/proj/g", "proj/dev", rules)
    check_graph_access("s3://graphs//proj/g", "proj/dev", rules)
    check_graph_access("s3://graphs/prod/g", "proj/prod", rules)
    check_graph_access("/anything", "x/y", {})  # no rules: a single-team connector
    for uri, owner, message in [("s3://graphs/proj-other/g", "proj/dev", "rule 'proj'"),
                                ("s3://graphs/proj/g", "proj/prod", "rule 'proj/prod'"),
                                ("s3://graphs/proj/../prod/g", "proj/dev", "'..' segments"),
                                ("s3://graphs/proj/g", "nobody/dev", "no rule for 'nobody/dev' or 'nobody'")]:
        with pytest.raises(GraphAccessDenied, match=message):
            check_graph_access(uri, owner, rules)
    with pytest.raises(SettingsError, match="GRAPHFLEET_GRAPH_ACCESS.*must be a plain URI ending in '/'"):
        Settings.from_env({"GRAPHFLEET_GRAPH_ACCESS": '{"proj": ["s3://graphs/proj"]}'})
    assert Settings.from_env({"GRAPHFLEET_GRAPH_ACCESS": '{"proj/dev": ["/data/"]}'}).graph_access == {
        "proj/dev": ["/data/"]}
