"""The names the layers share, defined once at the bottom so that no layer imports one above it.

Layer order, bottom to top: infra, graph_engine, flyte_agent, workflows; each imports only the ones
below it (tests/test_layers.py checks it). A name that two layers must spell alike lives here: the
graph-engine server's command and partition rule (infra renders it, graph_engine serves it), the
connector's task types, I/O, container and settings variables (infra deploys the connector,
flyte_agent serves it and its task DSL emits the templates), and what a trainer reads.

Standard library only: the graph-engine image carries this module and graph_engine/, nothing else
(docker/graph-engine.Dockerfile).
"""

from __future__ import annotations

from typing import Any

# ---- graph clients --------------------------------------------------------------------------------

# The environment variable a trainer reads: comma-separated host:port, in ordinal order.
ENDPOINTS_ENV = "GRAPHFLEET_ENDPOINTS"
# Label every client pod must carry to pass the data service's NetworkPolicy.
CLIENT_LABEL = "graphfleet.io/graph-client"

# ---- the graph-engine server ----------------------------------------------------------------------

# Extra graph-engine server arguments a workflow author may set (`DataServiceConfig.args`): flag ->
# its allowed values (None: a flag without a value). Each maps to a parameter of DeepGNN 0.1.66's
# `snark.server.Server` (deepgnn/graph_engine/snark/server.py); graph_engine.server parses these.
SERVER_ARGS: dict[str, tuple[str, ...] | None] = {
    "--storage": ("memory", "disk"),  # storage_type: features and index in memory, or read from local disk
    "--skip-temporal": None,          # skip_temporal_loading: no node/edge timestamps loaded
}


def assign_partitions(replicas: int, partitions: int) -> list[list[int]]:
    """Partitions served by each ordinal, with DeepGNN's `--server_group i,replicas,partitions` rule."""
    check_coverage(replicas, partitions)
    return [list(range(ordinal, partitions, replicas)) for ordinal in range(replicas)]


def check_coverage(replicas: int, partitions: int) -> None:
    """Every partition served by exactly one replica, and no replica idle.

    The DeepGNN client broadcasts to every server and merges: a partition nobody serves silently
    yields zeros, and an idle server is paid for and serves nothing.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if replicas > partitions:
        raise ValueError(
            f"replicas ({replicas}) exceeds partitions ({partitions}): ordinals {partitions}..{replicas - 1} "
            f"would serve no partition; set replicas <= {partitions} or repartition the graph")


# ---- the connector's tasks: what the task DSL emits and the connector serves -----------------------

DATA_SERVICE_TASK_TYPE = "graphfleet_data_service"
TEARDOWN_TASK_TYPE = "graphfleet_data_service_teardown"
# Every task type this connector serves: the connector Deployment routes them all to it in propeller.
TASK_TYPES = (DATA_SERVICE_TASK_TYPE, TEARDOWN_TASK_TYPE)
# Run-time inputs of a DataServiceTask; the default means "use the config".
INPUT_DEFAULTS: dict[str, Any] = {"graph_uri": "", "replicas": 0}
OUTPUT_TYPES: dict[str, type] = {"endpoints": list[str], "endpoints_env": str, "service": str}
TEARDOWN_INPUT_TYPES: dict[str, type] = {"service": str}
TEARDOWN_OUTPUT_TYPES: dict[str, type] = {"outcome": str}
# The teardown template's `custom` that releases every fleet of the workflow execution (no input).
RELEASE_EXECUTION: dict[str, Any] = {"release": "execution"}

# ---- the connector Deployment ---------------------------------------------------------------------

# `pyflyte serve connector` arguments that build the settings and provisioner before serving.
SERVE_MODULES = ("--modules", "flyte_agent.serve")
# The connector Deployment's container: its log links name it (flyte_agent/connector.py).
CONNECTOR_CONTAINER = "connector"
# The Pulumi CLI's own state backend variable: the Deployment sets it, the settings fall back to it.
PULUMI_BACKEND_URL_ENV = "PULUMI_BACKEND_URL"

# The connector's settings (flyte_agent/settings.py), one variable per field: `GRAPHFLEET_<FIELD>` in
# upper case, except these.
SETTINGS_PREFIX = "GRAPHFLEET_"
SETTINGS_ENV_NAMES = {"image": "GRAPHFLEET_DEFAULT_IMAGE", "backend_url": "GRAPHFLEET_PULUMI_BACKEND_URL"}
# Read when the graphfleet variable is unset.
SETTINGS_FALLBACK_ENV = {"backend_url": PULUMI_BACKEND_URL_ENV}


def env_name(field: str) -> str:
    """The environment variable of the connector setting `field`."""
    return SETTINGS_ENV_NAMES.get(field, SETTINGS_PREFIX + field.upper())
