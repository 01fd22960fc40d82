"""The task DSL: `DataServiceTask` brings up a graph-engine fleet, `DataServiceTeardownTask` releases it,
`DataServiceReleaseAllTask` releases every fleet of the workflow execution it runs in.

    graph = DataServiceTask(name="cora_graph", config=DataServiceConfig(replicas=2, cpu="2"))
    release = DataServiceTeardownTask(name="release_graph")

    @workflow
    def wf(uri: str) -> ...:
        fleet = graph(graph_uri=uri)                 # graph_uri / replicas may come at run time
        out = train(endpoints=fleet.endpoints_env)
        out >> release(service=fleet.service)

An `on_failure` handler is not handed the `service` output; it runs in the same execution, so it
calls a `DataServiceReleaseAllTask` (see workflows/gnn_training.py).

The config is validated here, at definition, so a typo fails `pyflyte run`/`register`, not a run
hours later. The connector validates again after merging the run-time inputs.
"""

from __future__ import annotations

from typing import Any

from flytekit.configuration import SerializationSettings
from flytekit.core.base_task import PythonTask
from flytekit.core.interface import Interface
from flytekit.extend.backend.base_connector import AsyncConnectorExecutorMixin
from pydantic import ValidationError

from infra.contract import (
    DATA_SERVICE_TASK_TYPE,
    INPUT_DEFAULTS,
    OUTPUT_TYPES,
    RELEASE_EXECUTION,
    TEARDOWN_INPUT_TYPES,
    TEARDOWN_OUTPUT_TYPES,
    TEARDOWN_TASK_TYPE,
)
from infra.spec import DataServiceSpec, describe_error

DataServiceConfig = DataServiceSpec

# Stands in for a graph that arrives as the `graph_uri` input while the rest of a config is validated.
_GRAPH_FROM_INPUT = "/graph-from-task-input"


def static_custom(name: str, config: DataServiceSpec | dict[str, Any]) -> dict[str, Any]:
    """The task template's `custom` for `config`: validated, exact-typed, no None.

    A dict may leave out both graph_uri and reuse: the graph then comes as the `graph_uri` input at
    run time (the connector refuses a run that gives neither).
    """
    if isinstance(config, DataServiceSpec):
        return config.to_template()
    if not isinstance(config, dict):
        raise TypeError(f"DataServiceTask {name!r}: config must be a DataServiceConfig or a dict of its "
                        f"fields, got {type(config).__name__}")
    from_input = config.get("graph_uri") is None and config.get("reuse") is None
    checked = {**config, "graph_uri": _GRAPH_FROM_INPUT} if from_input else config
    try:
        custom = DataServiceSpec.model_validate(checked).to_template()
    except ValidationError as err:
        raise ValueError(describe_error(err, f"DataServiceTask {name!r} config")) from None
    if from_input:
        del custom["graph_uri"]
    return custom


class DataServiceTask(AsyncConnectorExecutorMixin, PythonTask[dict[str, Any]]):
    """Provision a graph-engine fleet; outputs `endpoints`, `endpoints_env` and `service`.

    Inputs (optional, override the config): `graph_uri` ("" = the config's), `replicas` (0 = the
    config's).
    """

    def __init__(self, name: str, config: DataServiceSpec | dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(
            name=name,
            task_config=static_custom(name, {} if config is None else config),
            task_type=DATA_SERVICE_TASK_TYPE,
            interface=Interface(inputs={k: (type(v), v) for k, v in INPUT_DEFAULTS.items()},
                                outputs=OUTPUT_TYPES),
            **kwargs,
        )

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        return dict(self.task_config)


class DataServiceTeardownTask(AsyncConnectorExecutorMixin, PythonTask[None]):
    """Release the fleet named by a DataServiceTask's `service` output; outputs what happened."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(
            name=name,
            task_config=None,
            task_type=TEARDOWN_TASK_TYPE,
            interface=Interface(inputs=TEARDOWN_INPUT_TYPES, outputs=TEARDOWN_OUTPUT_TYPES),
            **kwargs,
        )


class DataServiceReleaseAllTask(AsyncConnectorExecutorMixin, PythonTask[dict[str, Any]]):
    """Release every fleet of the workflow execution this task runs in (no input; a run with none
    succeeds); outputs what happened. Locally the execution is the process (task_request.local_run())."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(
            name=name,
            task_config=dict(RELEASE_EXECUTION),
            task_type=TEARDOWN_TASK_TYPE,
            interface=Interface(inputs={}, outputs=TEARDOWN_OUTPUT_TYPES),
            **kwargs,
        )

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        return dict(self.task_config)
