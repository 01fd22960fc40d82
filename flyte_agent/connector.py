"""The Flyte connectors for graph data services, registered through the `flytekit.plugins` entry point.

A thin translation between Flyte's CreateTask/GetTask/DeleteTask and a `Provisioner`:

- create() validates everything it can (spec + run-time inputs, the graph's partition count, the
  image allow-list, a `reuse` target) and records it in `FleetMeta`; bad input is recorded as an
  error that get() reports as FAILED, so nothing is created. It then asks the provisioner to start,
  which returns at once.
- get() is level-triggered: it asks the provisioner what exists and moves it toward the spec (a
  fleet that vanished before it was ready is created again, until it expires).
- delete() (Flyte calls it on abort) tears the fleet down; so does the teardown task, given the
  fleet's `service`, or with `RELEASE_EXECUTION` every fleet of the workflow execution it runs in
  (what an on_failure handler needs: it is not handed the `service` output).

State lives in `FleetMeta` (handed back by Flyte on every call) and in the world, never in this
process: any replica, after any restart, answers for any execution.

`reuse=<name>` provisions nothing: the endpoints come from `GRAPHFLEET_SHARED_SERVICES`
(JSON name -> endpoints, which the connector Deployment fills from the Datacenter stack outputs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.extend.backend.base_connector import (
    AsyncConnectorBase,
    ConnectorRegistry,
    Resource,
    ResourceMeta,
)
from flytekit.models.literals import LiteralMap
from flytekit.models.task import TaskExecutionMetadata, TaskTemplate

from flyte_agent import deck, executions, leases, log_links, metrics, pods
from flyte_agent.executions import workflow_execution
from flyte_agent.provisioner import (
    DestroyInProgress,
    InvalidFleetName,
    NotOwner,
    Phase,
    Provision,
    Provisioner,
    Status,
    check_fleet_name,
)
from flyte_agent.settings import Settings, make_provisioner
from flyte_agent.task_request import execution_identity, resolve_spec, workflow_execution_id
from graph_engine import health
from infra.contract import (
    CONNECTOR_CONTAINER,
    DATA_SERVICE_TASK_TYPE,
    OUTPUT_TYPES,
    RELEASE_EXECUTION,
    TEARDOWN_TASK_TYPE,
)
from infra.spec import DataServiceSpec

log = logging.getLogger(__name__)

# The `service` output of a `reuse` task: never a provision name (those have no ':'), so teardown
# knows to leave the shared service alone.
SHARED_PREFIX = "shared:"

# Where Kubernetes writes a pod's namespace.
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass
class FleetMeta(ResourceMeta):
    """Everything get()/delete() need; JSON round-trippable (Flyte stores it between calls)."""

    name: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    owner: str = ""
    execution: str = ""
    created_at: float = 0.0
    endpoints: list[str] = field(default_factory=list)  # `reuse` only: the shared service's
    error: str = ""                                     # bad input: reported as FAILED, nothing created
    share: str = ""                                     # a shared fleet this execution holds a lease on
    output_prefix: str = ""                             # where propeller looks for this task's Deck

    def provision(self) -> Provision:
        spec = DataServiceSpec.from_custom(self.spec)
        if self.share:
            return leases.shared_provision(self.owner, self.share, spec, workflow_execution(self.execution),
                                           self.created_at)
        return Provision(name=self.name, spec=spec, owner=self.owner, execution=self.execution,
                         created_at=self.created_at)


@dataclass
class TeardownMeta(ResourceMeta):
    service: str = ""    # the fleet to release, or
    execution: str = ""  # with RELEASE_EXECUTION: every fleet of this workflow execution
    caller: str = ""     # the teardown's own workflow execution: whose lease a shared fleet drops
    owner: str = ""      # project/domain the teardown runs in: it releases only fleets recorded under it


def fleet_outputs(name: str, endpoints: list[str]) -> LiteralMap:
    # Typed here: flytekit cannot guess the literal type of a bare list.
    values = {"endpoints": endpoints, "endpoints_env": ",".join(endpoints), "service": name}
    return TypeEngine.dict_to_literal_map(FlyteContextManager.current_context(), values, OUTPUT_TYPES)


# A fleet coming up is INITIALIZING, not RUNNING: flyteplugins' connector plugin passes GetTask's
# message on for QUEUED, WAITING_FOR_RESOURCES and INITIALIZING but drops it for RUNNING
# (webapi/connector/plugin.go Status()), and the message is where the servers' progress is told.
_PHASES = {Phase.QUEUED: TaskExecution.QUEUED, Phase.UPDATING: TaskExecution.INITIALIZING}


class _Provisioning:
    """The process's settings and provisioner, made on first use (importing flytekit loads this
    module everywhere, e.g. in training pods, where no connector settings exist). A served connector
    makes them at start instead, through `infra.contract.SERVE_MODULES` (flyte_agent/serve.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: tuple[Settings, Provisioner] | None = None

    def get(self) -> tuple[Settings, Provisioner]:
        with self._lock:
            if self._made is None:
                settings = Settings.from_env()
                provisioner = make_provisioner(settings)
                metrics.register_fleets(settings.backend, provisioner.observed_fleets)
                self._made = (settings, provisioner)
            return self._made


provisioning = _Provisioning()

# flytekit runs a connector's plain methods on asyncio's default executor: min(32, cores + 4)
# threads, 6 on 2 cores, shared by every call. A delete waits up to GRAPHFLEET_DELETE_WAIT_SECONDS
# for its destroy, so a few aborts held most of those threads and CreateTask/GetTask queued past
# propeller's 10 s deadline (docs/benchmarks.md). The methods are coroutines instead, each running
# its blocking part on a pool of ours: calls that wait for a destroy on their own, so they never
# hold a thread that a create or a status read needs. Threads of both mostly wait (on S3, on a CLI
# process, on a destroy) and cost no CPU then; the CPU-heavy Pulumi work is the provisioner's,
# bounded by its own max_concurrent_operations.
_T = TypeVar("_T")


class _Pool:
    """A ThreadPoolExecutor made on first use: importing this module starts nothing."""

    def __init__(self, workers: int, prefix: str) -> None:
        self._workers, self._prefix = workers, prefix
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._prefix)
            return self._pool


_CALLS = _Pool(32, "graphfleet-call")
_DESTROY_WAITS = _Pool(64, "graphfleet-delete")


async def _off_loop(pool: _Pool, call: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(pool.get(), functools.partial(call, *args))


async def _within_get_deadline(call: Awaitable[Resource], doing: str) -> Resource:
    """`call`'s answer, or INITIALIZING once GRAPHFLEET_GET_WAIT_SECONDS have passed: flyteplugins counts
    a GetTask past its deadline as a failure and fails the task after five. The work goes on in its
    thread; being level-triggered, the next GetTask sees (or rejoins) it. INITIALIZING, not RUNNING:
    propeller keeps the message of the one and drops the other's (see _PHASES)."""
    settings, _ = provisioning.get()
    try:
        return await asyncio.wait_for(call, settings.get_wait_seconds)
    except TimeoutError:
        return Resource(phase=TaskExecution.INITIALIZING,
                        message=f"{doing} is still going on after {settings.get_wait_seconds:g}s")


class DataServiceConnector(AsyncConnectorBase):
    name = "graphfleet data service"

    def __init__(self) -> None:
        super().__init__(task_type_name=DATA_SERVICE_TASK_TYPE, metadata_type=FleetMeta)

    async def create(self, task_template: TaskTemplate, output_prefix: str, inputs: LiteralMap | None = None,
                     task_execution_metadata: TaskExecutionMetadata | None = None,
                     **kwargs: Any) -> FleetMeta:
        meta = await _off_loop(_CALLS, self._create, task_template, inputs, task_execution_metadata)
        meta.output_prefix = output_prefix
        return meta

    async def get(self, resource_meta: FleetMeta, **kwargs: Any) -> Resource:
        return await _within_get_deadline(_off_loop(_CALLS, self._get, resource_meta),
                                          f"data service {resource_meta.name}: reading its status")

    async def delete(self, resource_meta: FleetMeta, **kwargs: Any) -> None:
        await _off_loop(_DESTROY_WAITS, self._delete, resource_meta)

    def _create(self, task_template: TaskTemplate, inputs: LiteralMap | None,
                task_execution_metadata: TaskExecutionMetadata | None) -> FleetMeta:
        settings, provisioner = provisioning.get()
        name, owner, execution = execution_identity(task_execution_metadata, task_template.id.name)
        meta = FleetMeta(name=name, owner=owner, execution=execution, created_at=time.time())
        try:
            spec = resolve_spec(dict(task_template.custom or {}), _plain_inputs(inputs), settings, owner)
        except ValueError as err:
            log.warning("refusing data service %s: %s", name, err)
            meta.error = str(err)
            return meta
        meta.spec = spec.to_custom()
        if spec.reuse is not None:
            meta.name = SHARED_PREFIX + spec.reuse
            meta.endpoints = settings.shared_services[spec.reuse]
            return meta
        try:  # gc takes an execution it cannot find for aborted: refuse one it cannot find now
            executions.check_watchable(provisioner.executions, workflow_execution(execution))
        except ValueError as err:
            log.warning("refusing data service %s: %s", name, err)
            meta.error = str(err)
            return meta
        if spec.share is not None:
            return self._lease(meta, spec)
        try:
            provisioner.create(meta.provision())
        except ValueError as err:  # the provisioner's own validation: the same as bad input
            log.warning("refusing data service %s: %s", name, err)
            meta.error = str(err)
        except Exception:  # noqa: BLE001 - never a retryable CreateTask failure: get() creates again
            # Propeller counts a failed CreateTask against the task's retries (often 0); the fleet's
            # identity is already in the meta, and get() creates what it finds ABSENT.
            log.exception("data service %s: create failed; the next GetTask creates it again", name)
        return meta

    def _lease(self, meta: FleetMeta, spec: DataServiceSpec) -> FleetMeta:
        """Take this execution's lease on the shared fleet, making it if none runs."""
        assert spec.share is not None
        _, provisioner = provisioning.get()
        meta.share = spec.share
        provision = meta.provision()
        meta.name = provision.name
        try:
            provisioner.create(provision)  # takes the lease; refuses another spec, naming the fields
        except ValueError as err:
            log.warning("refusing data service %s: %s", meta.name, err)
            meta.error = str(err)
        except Exception:  # noqa: BLE001 - as for a fleet of its own: get() creates what it finds ABSENT
            log.exception("data service %s: create failed; the next GetTask creates it again", meta.name)
        return meta

    def _get(self, resource_meta: FleetMeta) -> Resource:
        if resource_meta.error:
            return Resource(phase=TaskExecution.FAILED, message=resource_meta.error)
        if resource_meta.endpoints:
            return self._shared(resource_meta)
        settings, provisioner = provisioning.get()
        # Read only, shared or not: a lease was taken at create; a lapsed fleet is re-made (with the
        # lease) by the ABSENT branch below; a running holder is renewed by gc.
        provision = resource_meta.provision()
        status = provisioner.status(provision)
        if settings.backend == "pulumi" and not status.servers and status.endpoints:
            # Pods are not read once READY: the servers by name (pod, endpoint), their phase unknown.
            status = dataclasses.replace(status, servers=pods.cluster_servers(
                provision.name, settings.namespace, provision.spec.replicas, status.endpoints))
        links = fleet_links(settings, provision, status)
        info = deck.custom_info(provision.spec, status.servers)
        if status.phase in (Phase.READY, Phase.FAILED):  # the last GetTask propeller makes: the Deck
            deck.write_fleet_deck(resource_meta.output_prefix, provision, status, links)
        if status.phase is Phase.READY:
            metrics.PROVISION_SECONDS.labels(settings.backend).observe(time.time() - provision.created_at)
            return Resource(phase=TaskExecution.SUCCEEDED, message=f"{len(status.endpoints)} servers ready",
                            outputs=fleet_outputs(provision.name, status.endpoints), log_links=links,
                            custom_info=info)
        if status.phase is Phase.FAILED:
            return Resource(phase=TaskExecution.FAILED, message=status.message, log_links=links,
                            custom_info=info)
        if status.phase is Phase.ABSENT:
            if time.time() >= provision.expires_at:
                return Resource(phase=TaskExecution.FAILED,
                                message=f"data service {provision.name} expired (ttl_seconds "
                                        f"{provision.spec.ttl_seconds}) before it was ready")
            provisioner.create(provision)
            return Resource(phase=TaskExecution.QUEUED, message=f"data service {provision.name} (re)created")
        return Resource(phase=_PHASES[status.phase], message=status.message, log_links=links,
                        custom_info=info)

    def _delete(self, resource_meta: FleetMeta) -> None:
        if resource_meta.error or resource_meta.endpoints:
            return
        settings, provisioner = provisioning.get()
        with metrics.timed_teardown(settings.backend):
            if resource_meta.share:  # this execution's lease only; the last one stops the fleet
                provisioner.release(resource_meta.name, resource_meta.owner,
                                    workflow_execution(resource_meta.execution))
                return
            provisioner.delete(resource_meta.name, resource_meta.owner, abort=True)

    def _shared(self, meta: FleetMeta) -> Resource:
        down = health.not_ready(meta.endpoints, timeout=1.0)
        if not down:
            return Resource(phase=TaskExecution.SUCCEEDED, message=f"shared service {meta.name}",
                            outputs=fleet_outputs(meta.name, meta.endpoints))
        spec = DataServiceSpec.from_custom(meta.spec)
        if time.time() - meta.created_at > spec.startup_seconds:
            return Resource(phase=TaskExecution.FAILED,
                            message=f"shared service {spec.reuse}: {', '.join(down)} not SERVING for "
                                    f"{spec.startup_seconds}s; check the datacenter's graph service")
        return Resource(phase=TaskExecution.RUNNING, message=f"waiting for {', '.join(down)}")


class DataServiceTeardownConnector(AsyncConnectorBase):
    name = "graphfleet data service teardown"

    def __init__(self) -> None:
        super().__init__(task_type_name=TEARDOWN_TASK_TYPE, metadata_type=TeardownMeta)

    def create(self, task_template: TaskTemplate, output_prefix: str, inputs: LiteralMap | None = None,
               task_execution_metadata: TaskExecutionMetadata | None = None, **kwargs: Any) -> TeardownMeta:
        # The teardown itself happens in get(): a destroy may outlast CreateTask's deadline, and
        # get() is retried until it succeeds, while a timed-out create would only leak.
        project, domain, name = workflow_execution_id(task_execution_metadata)
        owner = f"{project}/{domain}"
        if dict(task_template.custom or {}) == RELEASE_EXECUTION:
            # Its own execution: the one whose nodes provisioned (an on_failure node runs in it too).
            return TeardownMeta(execution="/".join((project, domain, name)), owner=owner)
        return TeardownMeta(service=str(_plain_inputs(inputs).get("service", "")),
                            caller="/".join((project, domain, name)), owner=owner)

    async def get(self, resource_meta: TeardownMeta, **kwargs: Any) -> Resource:
        # The teardown waits for the destroy like a delete does, but only as long as GetTask may take.
        what = resource_meta.service or f"the data services of {resource_meta.execution}"
        return await _within_get_deadline(_off_loop(_DESTROY_WAITS, self._get, resource_meta),
                                          f"releasing {what}")

    def _get(self, resource_meta: TeardownMeta) -> Resource:
        service, execution = resource_meta.service, resource_meta.execution
        if service.startswith(SHARED_PREFIX):
            return Resource(phase=TaskExecution.SUCCEEDED, outputs={"outcome": f"{service}: left running"})
        if not service and not execution:
            return Resource(phase=TaskExecution.FAILED,
                            message="service: empty; pass the DataServiceTask's `service` output")
        settings, provisioner = provisioning.get()
        try:
            if service:
                check_fleet_name(service)  # before anything is looked up by it
            with metrics.timed_teardown(settings.backend):
                if execution:
                    released = provisioner.release_execution(execution)
                    outcome = f"{execution}: released {', '.join(released) or 'nothing (none found)'}"
                else:
                    outcome = self._release(provisioner, service, resource_meta)
        except DestroyInProgress as err:  # get() is polled: a later one sees the outcome
            return Resource(phase=TaskExecution.RUNNING, message=str(err))
        except (InvalidFleetName, NotOwner) as err:  # refused before anything was touched
            return Resource(phase=TaskExecution.FAILED, message=f"service: {err}")
        except Exception as err:  # reported, never swallowed: the fleet may still be running
            what = f"the data services of {execution}" if execution else f"data service {service}"
            return Resource(phase=TaskExecution.FAILED,
                            message=f"could not release {what}: {err}; run the teardown again or "
                                    "`graphfleet gc` (fleets also expire at their ttl_seconds)")
        return Resource(phase=TaskExecution.SUCCEEDED, outputs={"outcome": outcome})

    @staticmethod
    def _release(provisioner: Provisioner, service: str, meta: TeardownMeta) -> str:
        """A teardown of a shared fleet drops its own execution's lease (the last one stops the fleet);
        any other fleet is deleted. Both only for the fleet's own project and domain (`NotOwner`)."""
        left = provisioner.release(service, meta.owner, meta.caller)
        if left is None:
            provisioner.delete(service, meta.owner)
            return f"{service}: released"
        return (f"{service}: released the lease of {meta.caller}; "
                + (f"{left} other lease(s) keep it running" if left else "no lease left, fleet stopped"))

    def delete(self, resource_meta: TeardownMeta, **kwargs: Any) -> None:
        """Aborting a teardown leaves the fleet to its TTL; there is nothing of its own to delete."""


def fleet_links(settings: Settings, provision: Provision, status: Status) -> list[Any]:
    """GetTask's log links: each server's, and on a cluster the connector replica's (whose output
    holds the Pulumi operation's)."""
    servers = status.servers
    if settings.backend == "pulumi" and not servers:
        servers = pods.cluster_servers(provision.name, settings.namespace, provision.spec.replicas,
                                       status.endpoints)
    links = log_links.server_links(provision, servers, settings.log_templates)
    if settings.backend == "pulumi":
        links += log_links.operation_links(provision, settings.log_templates, socket.gethostname(),
                                           _own_namespace(), CONNECTOR_CONTAINER)
    return links


@functools.cache  # a pod's namespace never changes; GetTask would read the file on every poll
def _own_namespace() -> str:
    """The connector pod's namespace: the downward API's POD_NAMESPACE, else the service account's."""
    try:
        return os.environ.get("POD_NAMESPACE") or Path(_SA_NAMESPACE).read_text().strip()
    except OSError:
        return ""


def _plain_inputs(inputs: LiteralMap | None) -> dict[str, Any]:
    """Scalars of the input literals (the DSL's inputs are str and int only)."""
    if inputs is None:
        return {}
    plain: dict[str, Any] = {}
    for key, literal in inputs.literals.items():
        primitive = literal.scalar.primitive if literal.scalar is not None else None
        if primitive is not None:
            plain[key] = primitive.value
    return plain


ConnectorRegistry.register(DataServiceConnector())
ConnectorRegistry.register(DataServiceTeardownConnector())
