"""What a data-service task's create carries, turned into a fleet: its identity and its checked spec.

The connector (flyte_agent/connector.py) calls these on CreateTask: the provision name that every
retry of one node execution shares, the owner and execution it is recorded under, and the spec with
the run-time inputs laid over the template, every check a user can fix done and explained.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from typing import Any

from flytekit.models.task import TaskExecutionMetadata
from pydantic import ValidationError

from flyte_agent import executions
from flyte_agent.graph_access import check_graph_access
from flyte_agent.settings import Settings
from graph_engine import sizing, store
from infra.contract import INPUT_DEFAULTS, env_name
from infra.names import STATEFULSET_NAME_MAX, name_hash
from infra.quantity import parse_memory
from infra.spec import SIZED_FIELDS, DataServiceSpec, describe_error

_SLUG = re.compile(r"[^a-z0-9]+")


@functools.cache
def local_run() -> str:
    """This process as a workflow execution, for local runs.

    A local run (`pyflyte run`, or calling the workflow in Python) hands connectors no execution
    metadata (flytekit's AsyncConnectorExecutorMixin passes none), and flytekit names every local
    execution local/local/local. Its connector tasks run in its own process, so locally the workflow
    execution is this process: every fleet it provisions is recorded under local/local/<local_run()>,
    which a RELEASE_EXECUTION teardown of the same process releases. One process, one identity: pid
    and start time (a later process reusing the pid differs), which is how gc tells that a local run
    still holds its fleets (flyte_agent/executions.py). Made on first use, not at import: flytekit
    imports this module in every process that imports it.
    """
    return executions.local_run(os.getpid())


# A child forked after this module was imported keeps its parent's identity, as when it was made at
# import: the identity is made, if not yet, just before the fork.
os.register_at_fork(before=local_run)


def provision_name(project: str, domain: str, execution: str, node: str) -> str:
    """A DNS-1123 name, the same for every retry of one node execution (so a retried create adopts
    the fleet), distinct across executions: a readable slug plus a hash of the exact identity."""
    identity = "/".join((project, domain, execution, node))
    digest = name_hash(identity)
    slug = _SLUG.sub("-", f"{execution}-{node}".lower()).strip("-")
    # Fits a StatefulSet name unshortened, so every object of the fleet carries this exact name.
    slug = slug[: STATEFULSET_NAME_MAX - len("gf--") - len(digest)].rstrip("-")
    return f"gf-{slug}-{digest}" if slug else f"gf-{digest}"


def workflow_execution_id(metadata: TaskExecutionMetadata | None) -> tuple[str, str, str]:
    """(project, domain, name) of the workflow execution a task runs in; see local_run() for local runs."""
    if metadata is None or metadata.task_execution_id is None:
        return "local", "local", local_run()
    wf = metadata.task_execution_id.node_execution_id.execution_id
    return wf.project, wf.domain, wf.name


def execution_identity(metadata: TaskExecutionMetadata | None, task_name: str) -> tuple[str, str, str]:
    """(provision name, owner, execution) for a task execution; every local create gets a fresh node,
    as nothing tells a local retry from another call."""
    project, domain, name = workflow_execution_id(metadata)
    if metadata is None or metadata.task_execution_id is None:
        node = f"{task_name}-{uuid.uuid4().hex[:8]}"
    else:
        node = metadata.task_execution_id.node_execution_id.node_id
    return (provision_name(project, domain, name, node), f"{project}/{domain}",
            "/".join((project, domain, name, node)))


def merge_inputs(custom: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The template's `custom` with the run-time inputs that were set laid over it."""
    merged = dict(custom)
    for key, default in INPUT_DEFAULTS.items():
        value = inputs.get(key, default)
        if value != default:
            merged[key] = value
    if inputs.get("graph_uri"):
        merged.pop("reuse", None)
    return merged


def resolve_spec(custom: dict[str, Any], inputs: dict[str, Any], settings: Settings,
                 owner: str) -> DataServiceSpec:
    """The spec `owner` (project/domain) provisions, every check done; raises ValueError with a
    message for the user. Graph access is checked before the graph is read."""
    merged = merge_inputs(custom, inputs)
    if merged.get("graph_uri") is None and merged.get("reuse") is None:
        raise ValueError("graph_uri: no graph given; set graph_uri (or reuse) in the DataServiceConfig "
                         "or pass the task's graph_uri input")
    try:
        spec = DataServiceSpec.from_custom(merged)
    except ValidationError as err:
        raise ValueError(describe_error(err, "data service")) from None
    if spec.image is not None:
        try:
            settings.check_image(spec.image)
        except ValueError as err:
            raise ValueError(f"image: {spec.image!r} is not allowed by this connector: {err}; or leave "
                             f"image unset to use {settings.image}") from None
    if spec.reuse is not None:
        if spec.reuse not in settings.shared_services:
            known = ", ".join(sorted(settings.shared_services)) or "none configured"
            raise ValueError(f"reuse: {spec.reuse!r} is not a shared graph service of this datacenter "
                             f"(known: {known}; {env_name('shared_services')})")
        return spec
    assert spec.graph_uri is not None
    check_graph_access(spec.graph_uri, owner, settings.graph_access)
    try:
        found = store.partition_count(spec.graph_uri)
    except (OSError, ValueError) as err:
        raise ValueError(f"graph_uri: cannot read the graph: {err}") from None
    if spec.partitions is not None and spec.partitions != found:
        raise ValueError(f"partitions: the config says {spec.partitions} but {spec.graph_uri} has {found}; "
                         "leave partitions unset to read it from the graph")
    try:
        return spec.with_partitions(found, **sized_resources(spec, found))
    except ValidationError as err:
        raise ValueError(describe_error(err, "data service")) from None


def sized_resources(spec: DataServiceSpec, partitions: int) -> dict[str, str]:
    """Memory and scratch per server from the sizes of the partitions it loads (graph_engine/sizing.py):
    computed where the config leaves them unset, checked where it states them."""
    assert spec.graph_uri is not None
    try:
        manifest = {**store.read_info(spec.graph_uri), "partitions": partitions}
    except FileNotFoundError:
        return {}  # a graph without graphfleet's manifest: nothing to size from
    if not sizing.has_sizes(manifest):
        return {}
    sized = {}
    need = sizing.memory_mib(manifest, spec.replicas)
    if SIZED_FIELDS[0] not in spec.model_fields_set:
        sized["memory"] = f"{need}Mi"
    elif parse_memory(spec.memory) < need * sizing.MIB:
        raise ValueError(f"memory: {spec.memory} per server is below the {need}Mi a server needs to hold "
                         f"its partitions of {spec.graph_uri} with {spec.replicas} replica(s); set memory to "
                         f"at least {need}Mi, add replicas, or leave memory unset to size it from the graph")
    scratch = sizing.scratch_mib(manifest, spec.replicas)
    if SIZED_FIELDS[1] not in spec.model_fields_set:
        sized["scratch_size"] = f"{scratch}Mi"
    elif store.is_s3(spec.graph_uri) and parse_memory(spec.scratch_size) < scratch * sizing.MIB:
        raise ValueError(f"scratch_size: {spec.scratch_size} is below the {scratch}Mi a server needs to "
                         f"download its partitions of {spec.graph_uri}; set at least {scratch}Mi or leave it "
                         "unset")
    return sized
