"""One ephemeral Pulumi stack per task execution, driven through the Automation API.

The stack in the self-managed backend is the only record: its name comes from `Provision.name`,
its tags carry owner, execution, expiry and the number of `up` attempts, its history says whether
the last `up` succeeded, and its outputs carry the endpoints. So `status()` on any replica, after any
restart, reads the stack and moves it toward "up succeeded": it starts an `up` when none ran, retries
a failed one a bounded number of times, and removes a lock whose holder is dead (that lock file only,
never `cancel`: flyte_agent/replicas.py), then runs `up` again, which carries the dead one's pending
creates over and adopts their objects.

What this process keeps in memory is about itself and never the only record of a fleet: the
operations its workers run (flyte_agent/stack_operations.py), a lock per stack for lease changes
(the policy: flyte_agent/lifecycle.py), the release listings under way, and read caches (each stack's
last succeeded update, the sweep's last listing). A restarted process reads the stacks again.

Every CLI call goes through `TimedPulumiCommand` (flyte_agent/pulumi_cli.py), the Automation API's
`pulumi_command=` seam: it bounds each call with a timeout (the API has none) and lets `delete()`
interrupt a running `up`. What the stack's tags mean is flyte_agent/stack_record.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pulumi import automation as auto
from pulumi.automation.errors import (
    CommandError,
    ConcurrentUpdateError,
    StackAlreadyExistsError,
    StackNotFoundError,
)

from flyte_agent import leases, lifecycle, metrics, pending_creates, pod_failures, replicas, stack_record
from flyte_agent.consumers import Consumers
from flyte_agent.consumers import workflow_execution as workflow_execution_of
from flyte_agent.fleet_program import fleet_args, fleet_program, warm_import_kubernetes
from flyte_agent.pods import KubernetesPods, cluster_servers, with_servers
from flyte_agent.provisioner import (
    DestroyInProgress,
    FleetInfo,
    GcError,
    Phase,
    Provision,
    ServerState,
    Status,
    check_fleet_name,
    check_owner,
    check_workflow_execution,
)
from flyte_agent.pulumi_cli import (
    KILLED,
    NOT_STARTED,
    TimedPulumiCommand,
    cli_output,
    error_text,
    interrupted,
)
from flyte_agent.settings import Settings
from flyte_agent.stack_operations import StackOperations
from infra.graph_service import await_timeout_seconds

log = logging.getLogger(__name__)

# Beyond the StatefulSet's await: the provider's other objects, state writes, plugin start-up.
_CLI_MARGIN_SECONDS = 300
# What the fleet program's guard raises when the stack is a tombstone (see _refuse_if_tombstoned).
_TOMBSTONED = "graphfleet: tombstoned"
# What the CLI prints when SIGINT/SIGTERM cancels an operation (pulumi pkg/backend/cancellation_scope.go,
# v3.274.0: "^C received; cancelling." / "SIGTERM received; cancelling."): a drain, a rollout.
_CANCELLED = "received; cancelling"
# A READY stack's status read checks (and repairs) its record at most this often. The record only
# needs repair after a lost concurrent tag write, and every read before READY repairs it; a READY read
# otherwise costs one CLI call (`stack history`), and propeller polls every task every few seconds.
_RECORD_CHECK_SECONDS = 300.0
# Succeeded updates remembered (`_seen_up`): far more than the fleets one connector serves at once.
_SEEN_UPS_MAX = 4096
# How long close() lets cancelled CLI operations end gracefully (releasing their locks) before it kills
# them: a cancelled `up` ends within seconds; one that ignores SIGINT would otherwise hold close() forever.
_CLOSE_GRACE_SECONDS = 10.0
# The `passphrase` secrets provider reads one of these; the CLI fails without them non-interactively.
_PASSPHRASE_ENV = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")


class PulumiProvisioner:
    """`Provisioner` over ephemeral Pulumi stacks; see the module docstring for the state model."""

    def __init__(self, settings: Settings,
                 health: Callable[[list[str]], list[str]] | None = None,
                 clock: Callable[[], float] = time.time, consumers: Consumers | None = None,
                 pods: PodReader | None = None) -> None:
        if not settings.backend_url.startswith(("s3://", "file://")):
            raise ValueError(f"backend_url: {settings.backend_url!r} is not a self-managed backend; "
                             "set GRAPHFLEET_PULUMI_BACKEND_URL to s3://bucket?endpoint=... or file:///path")
        passphrase = any(os.environ.get(var) for var in _PASSPHRASE_ENV)
        if settings.secrets_provider is None and not passphrase:
            raise ValueError("PULUMI_CONFIG_PASSPHRASE is not set: without GRAPHFLEET_SECRETS_PROVIDER "
                             "(a KMS URL) the ephemeral stacks' secrets provider is `passphrase`; set one of "
                             "them (or PULUMI_CONFIG_PASSPHRASE_FILE) in the connector's env")
        warm_import_kubernetes()
        self.settings = settings
        self._health = health or _default_health
        self._pods: PodReader | bool | None = pods  # None: made on first use; False: no cluster config
        self._clock = clock
        self._backend = replicas.Backend(settings.backend_url)
        self._liveness = replicas.Liveness(self._backend, settings.heartbeat_seconds,
                                           clock)
        self.consumers = consumers
        # One lease change of a stack at a time in this process (tag writes are read-modify-write).
        self._lease_locks: dict[str, threading.Lock] = {}
        self._command = TimedPulumiCommand(settings.pulumi_command, settings.operation_timeout_seconds,
                                           settings.command_timeout_seconds)
        self._ops = StackOperations(settings.max_concurrent_operations, self._command.interrupt)
        # release_execution()'s stack listings, by workflow execution: reads, off the operation pool.
        self._listings: dict[str, Future[tuple[list[str], list[tuple[str, str]]]]] = {}
        # ...and the stacks it is destroying, until a call has seen each outcome: a stack removed
        # before the next listing is still reported (and its destroy forgotten) by that call.
        self._releasing: dict[str, set[str]] = {}
        self._lister = ThreadPoolExecutor(settings.max_concurrent_operations,
                                          thread_name_prefix="pulumi-list")
        self._lock = threading.Lock()  # guards the maps above and below
        self._seen_ups: dict[str, _SeenUp] = {}  # by stack: what its latest succeeded update exported
        self._observed: tuple[float, list[FleetInfo]] | None = None  # the sweep's last listing
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        if settings.gc_interval_seconds > 0:
            self._sweeper = threading.Thread(target=self._sweep, name="graphfleet-gc", daemon=True)
            self._sweeper.start()

    # -- Provisioner -----------------------------------------------------------------------------

    def create(self, provision: Provision) -> None:
        fleet_args(provision, self.settings)  # a bad spec fails here, before any stack exists
        if self._expired(provision):
            return
        if provision.holder:
            self._take_lease(provision)
        self._enqueue(provision)

    def _take_lease(self, provision: Provision) -> None:
        """`provision.holder`'s lease on a shared stack that exists (one `stack tag ls`, and tag writes
        only where the lease moves); refused for another spec. An absent stack gets the lease with its
        first tags, when its `up` makes it."""
        name = stack_record.stack_name(provision.name)
        with self._stacks(_UnselectedWorkspace) as store, store.lock(name):
            record = store.read(name)
            if record is None:
                return
            if record.tombstone:
                # A shared stack destroyed but not removed (a give-up): this holder starts it afresh.
                store.remove(name)
                return
            if not record.shared:
                return  # being made by a concurrent `up`: status() adds the lease (_repaired_tags)
            lifecycle.take_lease(store, record, provision)

    def status(self, provision: Provision) -> Status:
        """The stack's status, and until READY its pods': their progress, and a fleet that cannot
        start (flyte_agent/pod_failures.py) fails now instead of after every `up` timed out."""
        try:
            status = self._stack_status(provision)
        except CommandError as err:
            if not interrupted(err):
                raise
            # A CLI process of this read killed (its pod's OOM killer, an operator) or timed out: an error
            # would reach propeller as a failed GetTask, which flyteplugins' webapi cache counts and
            # never forgives (more than 5 fail the task); a phase still in progress costs nothing, and
            # the next poll reads again.
            log.warning("stack %s: status read interrupted: %s", provision.name, error_text(err))
            return Status(Phase.UPDATING, message=(
                f"data service {provision.name}: reading its status was interrupted ({error_text(err)}); "
                "the next status read tries again"))
        if status.phase not in (Phase.QUEUED, Phase.UPDATING, Phase.FAILED):
            return status
        reader = self._pod_reader()
        found = reader.pods(self.settings.namespace, provision.name) if reader is not None else None
        if reader is None or found is None:
            return status
        destroying = self._ops.destroying(stack_record.stack_name(provision.name))
        if status.phase is not Phase.FAILED and not destroying:
            why = pod_failures.fleet_failure(found, self._clock(), self.settings.unschedulable_seconds,
                                             self.settings.crash_loop_restarts)
            if why is None and len(found) < provision.spec.replicas:  # pods missing: refused at creation?
                refused = reader.create_failures(self.settings.namespace, provision.name)
                why = pod_failures.create_failure(refused or [], len(found), provision.spec.replicas,
                                                  self._clock(), self.settings.unschedulable_seconds)
            if why is not None:
                status = self._cannot_start(provision, why)
        return with_servers(status, provision.name, self.settings.namespace, provision.spec.replicas, found,
                            reader.log_tail)

    def _stack_status(self, provision: Provision) -> Status:
        name = stack_record.stack_name(provision.name)
        local = self._ops.busy(name)
        if local is not None:
            return local
        # Polled by every GetTask, so as few CLI processes as the answer needs: the history (which
        # also tells an absent stack), then the outputs of a stack that is up, else the tags.
        with self._workspace(provision, workspace=_UnselectedWorkspace) as ws:
            stack = auto.Stack.select(name, ws)
            try:
                # Self-managed backends record an operation only when it ends: an `up` that is running,
                # or died with its process, is an attempt counted in the tags with no history entry.
                history = stack.history(show_secrets=False)
            except StackNotFoundError:
                if self._expired(provision):
                    return self._expired_status(provision)
                self._enqueue(provision)
                return Status(Phase.QUEUED, message=f"stack {name} absent; pulumi up queued")
            if stack_record.is_tombstone([entry.kind for entry in history]):
                tags = stack.list_tags()
                if tags.get(stack_record.TAG_GAVE_UP) == "true":
                    return self._gave_up_status(name, tags, destroyed=True)
                return Status(Phase.FAILED, message=f"data service {provision.name} was deleted (an abort or "
                                                    "a teardown); it is not brought back")
            last = history[0] if history else None
            if last is not None and last.kind == "update" and last.result == "succeeded":
                return self._ready(stack, last, provision)
            tags = self._repaired_tags(stack, provision)
            tried = stack_record.attempts(tags)
            last_error = tags.get(stack_record.TAG_LAST_ERROR, "")
            ended = stack_record.last_attempt_ended(tags, [(e.kind, e.message) for e in history])
            gave_up = tags.get(stack_record.TAG_GAVE_UP) == "true"
            if gave_up or (tried >= self.settings.max_attempts and ended):
                # Destroy on give-up: propeller calls DeleteTask only on abort, so a FAILED fleet's
                # half-made objects would otherwise run until its expiry.
                if not gave_up:
                    stack.set_tag(stack_record.TAG_GAVE_UP, "true")
                self._start_destroy(name, None)
                return self._gave_up_status(name, tags, destroyed=False)
            if self._expired(provision):
                return self._expired_status(provision)
            holder = self._settle_locks(name, provision) if not ended else None
            if holder is not None:
                # Round-robin GetTasks reach every replica: an `up` queued here would only fail on the
                # lock of the one running (issue 8 item 11).
                return Status(Phase.UPDATING, message=f"stack {name}: pulumi up attempt {tried} is running "
                                                      f"on {holder.hostname} (pid {holder.pid})")
            wait = self._retry_wait(tags) if ended else 0.0
            if wait <= 0:
                self._enqueue(provision)
            if not ended:
                return Status(Phase.UPDATING, message=f"stack {name}: pulumi up attempt {tried} was "
                                                      "interrupted (its process died); it is started again")
            retry = f" after: {last_error}" if last_error else ""
            attempt = f"attempt {tried + 1} of {self.settings.max_attempts}"
            when = f" in {math.ceil(wait)} s" if wait > 0 else ""
            return Status(Phase.QUEUED, message=f"pulumi up queued for stack {name} ({attempt}{when}){retry}")

    def delete(self, name: str, owner: str, abort: bool = False) -> None:
        """Start (or rejoin) the destroy on a worker and wait `delete_wait_seconds` for it.

        Propeller gives DeleteTask a deadline and retries a call that misses it while the server
        side keeps running; so the destroy outlives the call, and a later call reports its outcome.
        The worker destroys only a stack whose owner tag is `owner`, and keeps it, empty, as a
        tombstone (its history ends in the destroy) that no later `up` gets past; gc removes it at
        its expiry. With `abort` (DeleteTask: the caller is the fleet's own task, whose `up` may still
        be queued on any replica), a stack that does not exist yet is made a tombstone too.
        """
        name = stack_record.stack_name(check_fleet_name(name))
        job = self._start_destroy(name, owner, abort)
        wait([job], timeout=self.settings.delete_wait_seconds)
        if not job.done():
            raise DestroyInProgress(
                f"stack {name}: pulumi destroy is still running after "
                f"{self.settings.delete_wait_seconds:g}s; it goes on in the background, and deleting again "
                "reports its outcome")
        err = self._destroy_outcome(name, job)
        if err is not None:
            raise err

    def release_execution(self, workflow_execution: str) -> list[str]:
        """Find the execution's stacks by their execution tag, then destroy them as delete() does.

        Both steps go on in the background past `delete_wait_seconds` (listing reads every stack's
        tags, one CLI call each); a later call rejoins them. Outcomes are kept until every destroy
        of the execution has ended, so the call that settles it reports them all.
        """
        check_workflow_execution(workflow_execution)
        deadline = time.monotonic() + self.settings.delete_wait_seconds
        with self._lock:
            listing = self._listings.get(workflow_execution)
            if listing is None:
                listing = self._listings[workflow_execution] = self._lister.submit(
                    self._stacks_of, workflow_execution)
        wait([listing], timeout=self.settings.delete_wait_seconds)
        if not listing.done():
            raise DestroyInProgress(f"listing the stacks of {workflow_execution} is still running after "
                                    f"{self.settings.delete_wait_seconds:g}s; releasing again rejoins it")
        with self._lock:
            self._listings.pop(workflow_execution, None)
        try:
            stacks, held = listing.result()
        except CommandError as err:
            raise RuntimeError(f"could not list the stacks of {workflow_execution}: "
                               f"{error_text(err)}") from err
        # Shared stacks the execution holds a lease on: drop it; the last lease stops the stack.
        stopped = [name for name, owner in held if self.release(name, owner, workflow_execution) == 0]
        with self._lock:
            started = self._releasing.get(workflow_execution, set())
        jobs = {name: self._start_destroy(name, None) for name in sorted(started.union(stacks))}
        try:
            return sorted(self._settle_release(workflow_execution, jobs, deadline) + stopped)
        finally:
            with self._lock:
                unseen = {name for name, job in jobs.items() if self._ops.current_destroy(name) is job}
                if unseen:
                    self._releasing[workflow_execution] = unseen
                else:
                    self._releasing.pop(workflow_execution, None)

    def _settle_release(self, workflow_execution: str, jobs: dict[str, Future[None]],
                        deadline: float) -> list[str]:
        """Wait for the destroys until `deadline`; report them once all have ended."""
        wait(jobs.values(), timeout=max(0.0, deadline - time.monotonic()))
        running = [f"stack {name}: pulumi destroy is still running" for name, job in jobs.items()
                   if not job.done()]
        # A lock held by another process is no outcome: forgotten, so the next call destroys again.
        running += [str(self._destroy_outcome(name, job)) for name, job in jobs.items()
                    if job.done() and isinstance(job.exception(), ConcurrentUpdateError)]
        if running:
            raise DestroyInProgress(f"releasing {workflow_execution} has not ended after "
                                    f"{self.settings.delete_wait_seconds:g}s; it goes on in the background, "
                                    "and releasing again reports the outcome:\n" + "\n".join(running))
        failures = [str(err) for name, job in jobs.items() if (err := self._destroy_outcome(name, job))]
        if failures:
            raise RuntimeError(f"could not release {len(failures)} of the {len(jobs)} fleet(s) of "
                               f"{workflow_execution}; release again to retry:\n" + "\n".join(failures))
        return sorted(jobs)

    def gc(self, now: float) -> list[str]:
        with self._stacks(auto.LocalWorkspace) as store:
            done = lifecycle.collect(store, self.consumers, now, self.settings.renew_seconds,
                                     failure=(CommandError, DestroyInProgress), describe=_described)
        metrics.observe_gc("pulumi", len(done.stopped), len(done.failures))
        if done.failures:
            raise GcError(done.stopped, done.failures)
        return done.stopped

    def fleets(self) -> list[FleetInfo]:
        """Every graphfleet stack, from its tags, history and outputs: no `up`, no health probe."""
        infos = []
        with self._workspace(None, workspace=_UnselectedWorkspace) as ws:
            for summary in ws.list_stacks():
                name = stack_record.short_stack_name(summary.name)
                stack = auto.Stack.select(name, ws)
                try:
                    tags = stack.list_tags()
                    history = stack.history(show_secrets=False)
                except StackNotFoundError:
                    continue  # removed since the listing
                if (tags.get(stack_record.TAG_MANAGED) != "true"
                        or stack_record.is_tombstone([entry.kind for entry in history])):
                    continue
                infos.append(self._fleet_info(stack, tags, history))
        return infos

    def _fleet_info(self, stack: auto.Stack, tags: Mapping[str, str],
                    history: Sequence[auto.UpdateSummary]) -> FleetInfo:
        last = history[0] if history else None
        endpoints: list[str] = []
        if last is not None and last.kind == "update" and last.result == "succeeded":
            phase = Phase.READY
            endpoints = self._seen_up(stack, last).endpoints
        elif tags.get(stack_record.TAG_GAVE_UP) == "true":
            phase = Phase.FAILED
        else:
            busy = self._ops.busy(stack.name)
            phase = Phase.UPDATING if busy is None else busy.phase
        # The stack name is the fleet name (DNS-1123 names need no shortening to be stack names); the
        # first update's start is when the fleet was made; the replicas are known once it is up.
        return FleetInfo(
            name=stack.name, owner=tags.get(stack_record.TAG_OWNER, ""),
            execution=tags.get(stack_record.TAG_EXECUTION, ""),
            phase=phase, created_at=history[-1].start_time.timestamp() if history else 0.0,
            expires_at=stack_record.expires_at(tags) or 0.0, replicas=len(endpoints), endpoints=endpoints,
            servers=cluster_servers(stack.name, self.settings.namespace, len(endpoints), endpoints),
            leases=sorted(leases.live(self._leases(stack.name, tags), self._clock())),
            message=tags.get(stack_record.TAG_LAST_ERROR, ""))

    def observed_fleets(self) -> tuple[float, list[FleetInfo]] | None:
        """The fleets as the sweep last listed them (as it starts, then after each gc pass), and when:
        the fleet gauges' source, so a scrape starts no CLI process (a listing is one per stack, or
        two). None until that first listing, and without a sweep (gc_interval_seconds 0)."""
        return self._observed

    def _observe(self) -> None:
        try:
            self._observed = (self._clock(), self.fleets())
        except Exception:  # noqa: BLE001 - the gauges keep the last listing, its age says how old
            log.exception("listing the fleets for the fleet gauges failed")

    def drain(self, timeout: float) -> None:
        """On SIGTERM (a rollout, an eviction): start nothing new, cancel every running CLI operation
        gracefully (SIGINT: it ends, recorded as failed, and releases its lock, so no replica has to
        break a stale lock later) and wait up to `timeout` for them. The fleets stay as they are; any
        replica's next status read carries on."""
        self._stop.set()
        self._ops.close(wait=False)
        deadline = time.monotonic() + timeout
        self._command.interrupt()
        while self._command.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        """Stop the sweep thread, cancel running Pulumi operations (killing what ignores the cancel after
        `_CLOSE_GRACE_SECONDS`) and wait for the workers, which then start no new operation."""
        self._stop.set()
        self._liveness.stop()
        self._command.close(_CLOSE_GRACE_SECONDS)
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        self._ops.close()
        self._lister.shutdown(cancel_futures=True)

    # -- internals -------------------------------------------------------------------------------

    def _destroy_outcome(self, name: str, job: Future[None]) -> BaseException | None:
        """An ended destroy's outcome as the error to raise (None: destroyed), and forget the destroy:
        the next delete of the stack starts afresh (e.g. after a failure)."""
        self._ops.forget_destroy(name, job)
        err = job.exception()
        if isinstance(err, ConcurrentUpdateError):
            # A live process holds the lock: this stack's destroy or up, on another replica or by a
            # CLI that outlived its connector. Level-triggered: ask again until it is gone.
            lock = stack_record.parse_lock(cli_output(err))
            holder = f" (pid {lock.pid} on {lock.host} since {lock.created})" if lock else ""
            outcome: BaseException = DestroyInProgress(
                f"stack {name} is locked by another running pulumi operation{holder}; deleting again after "
                "it ends destroys the stack")
        elif isinstance(err, CommandError):
            outcome = RuntimeError(f"stack {name}: pulumi destroy failed: {error_text(err)}")
        else:
            return err
        outcome.__cause__ = err
        return outcome

    def _stacks_of(self, workflow_execution: str) -> tuple[list[str], list[tuple[str, str]]]:
        """The stacks graphfleet made for the workflow execution, by their execution tag; and the
        shared stacks it holds a lease on, with their owners."""
        found, held = [], []
        with self._workspace(None, workspace=_UnselectedWorkspace) as ws:
            for summary in ws.list_stacks():
                name = stack_record.short_stack_name(summary.name)
                try:
                    tags = auto.Stack.select(name, ws).list_tags()
                except StackNotFoundError:
                    continue  # removed since the listing
                execution = workflow_execution_of(tags.get(stack_record.TAG_EXECUTION, ""))
                if (tags.get(stack_record.TAG_MANAGED) != "true"
                        or tags.get(stack_record.TAG_DELETED) == "true"):
                    continue
                if execution == workflow_execution:
                    found.append(name)
                elif workflow_execution in self._leases(name, tags):
                    held.append((name, tags.get(stack_record.TAG_OWNER, "")))
        return found, held

    def _enqueue(self, provision: Provision) -> None:
        """An `up` attempt on a worker, unless one (or a destroy) is queued or running here."""
        self._ops.start_up(stack_record.stack_name(provision.name), provision.owner,
                           functools.partial(self._converge, provision))

    def _start_destroy(self, name: str, owner: str | None, abort: bool = False) -> Future[None]:
        """The destroy of stack `name` that this process runs (`StackOperations.start_destroy`)."""
        return self._ops.start_destroy(name, owner, lambda up: self._teardown_stack(name, owner, up, abort))

    def _teardown_stack(self, name: str, owner: str | None, up: Future[None] | None, abort: bool) -> None:
        if up is not None and not up.cancelled():
            try:
                up.result(timeout=self.settings.command_timeout_seconds)
            except TimeoutError as err:
                raise RuntimeError(f"stack {name}: the running pulumi up did not stop within "
                                   f"{self.settings.command_timeout_seconds:g}s; retry the delete") from err
            except Exception:  # noqa: BLE001 - the interrupted up's own failure is expected here
                pass
        # Without the fleet's program: destroy never runs it, and a name-only teardown has no spec.
        with self._workspace(None) as ws:
            try:
                stack = auto.Stack.select(name, ws)
            except StackNotFoundError:
                if not abort or owner is None:
                    return  # nothing to release
                stack = self._create_tombstone(name, owner, ws)
            else:
                tags = stack.list_tags()
                recorded = tags.get(stack_record.TAG_OWNER)
                # An aborting task holds the fleet's identity (the name hashes it): a stack its own
                # `up` made but has not tagged yet is its own.
                if owner is not None and not (abort and recorded is None):
                    check_owner(name, recorded, owner)
                if stack_record.TAG_SHARE in tags:
                    # A shared stack is no tombstone: its name is the share's, which a later holder
                    # makes again; a queued `up` of a released holder finds no stack and makes it
                    # with that holder's lease only, which lapses.
                    self._destroy(stack, None, remove=True)
                    return
            self._destroy(stack, None, remove=False)
            stack.set_tag(stack_record.TAG_DELETED, "true")

    def _converge(self, provision: Provision) -> None:
        """One attempt to bring the stack to "up succeeded"; runs on a worker thread."""
        name = stack_record.stack_name(provision.name)
        if self._expired(provision):
            return  # past its time to live: nothing brings it up (gc collects what exists)
        try:
            with self._workspace(provision) as ws:
                stack = self._create_or_select(name, ws, provision)
                history = stack.history(show_secrets=False)
                if stack_record.is_tombstone([entry.kind for entry in history]):
                    return  # deleted while this `up` was queued
                if history and history[0].kind == "update" and history[0].result == "succeeded":
                    return
                tags = stack.list_tags()
                tried = stack_record.attempts(tags)
                before = tags.get(stack_record.TAG_ATTEMPTS, "0")  # what a give-back restores
                if not stack_record.last_attempt_ended(tags, [(e.kind, e.message) for e in history]):
                    # The last counted attempt has no result: it runs on a live replica, or it died with
                    # its replica or CLI (killed, evicted), which is no failure of the fleet: given back,
                    # this attempt takes its place.
                    if self._settle_locks(name, provision) is not None:
                        return
                    tried -= 1
                if tried >= self.settings.max_attempts:
                    stack.set_tag(stack_record.TAG_GAVE_UP, "true")
                    return
                if self._retry_wait(tags) > 0:
                    return  # queued before the failed attempt's backoff ran out: a later status read requeues
                attempt = uuid.uuid4().hex[:12]
                stack.set_tag(stack_record.TAG_ATTEMPTS, stack_record.attempt_tag(tried + 1, attempt))
                try:
                    self._up_or_settle(stack, tags, attempt, provision)
                except ConcurrentUpdateError:
                    # A live holder took the lock first: no attempt of ours (given back).
                    stack.set_tag(stack_record.TAG_ATTEMPTS, before)
                except CommandError as err:
                    if not any(mark in cli_output(err) for mark in (_CANCELLED, KILLED, NOT_STARTED)):
                        # Failed: this attempt has ended, even where the CLI failed before it took the
                        # lock and so wrote no history entry.
                        stack.set_tag(stack_record.TAG_ATTEMPTS,
                                      stack_record.attempt_tag(tried + 1, attempt, failed_at=self._clock()))
                        raise
                    # Cancelled (a drain, a rollout, close()) or killed from outside, not failed: the
                    # attempt is given back.
                    stack.set_tag(stack_record.TAG_ATTEMPTS, before)
                    log.info("stack %s: pulumi up was cancelled or killed; the next status read starts it "
                             "again", name)
        except CommandError as err:
            if _TOMBSTONED in cli_output(err):
                log.info("stack %s: deleted before its queued up ran; nothing created", name)
                return
            if NOT_STARTED in cli_output(err):  # an attempt without a result: the next one takes its place
                log.info("stack %s: pulumi up not started; this connector is shutting down", name)
                return
            log.warning("stack %s: pulumi up failed: %s", name, error_text(err))
            self._record_error(provision, error_text(err))
        except Exception as err:  # noqa: BLE001 - a worker must record every failure on the stack
            log.exception("stack %s: converge failed", name)
            self._record_error(provision, stack_record.clip(f"{type(err).__name__}: {err}"))

    def _retry_wait(self, tags: Mapping[str, str]) -> float:
        return stack_record.retry_wait(tags, self.settings.retry_backoff_seconds, self._clock())

    def _settle_locks(self, name: str, provision: Provision | None) -> replicas.LockFile | None:
        """The one lock step (flyte_agent/replicas.py `Liveness.settle`): dead holders' lock files go, a
        live holder's lock is returned, never broken. Pending creates a dead `up` left stay in the state:
        the next `up` carries them over (pulumi pkg/backend/journal.go, v3.274.0) and its provider
        upserts their objects, and a destroy adopts them (flyte_agent/pending_creates.py). Clearing them
        (`refresh --clear-pending-creates`) left a window where a replica dying before its `up` lost
        them from every record."""
        return self._liveness.settle(stack_record.PROJECT, name, self._operation_timeout(provision))

    def _up_or_settle(self, stack: auto.Stack, tags: Mapping[str, str], attempt: str,
                      provision: Provision) -> None:
        """`up`; on a lock the settling before it did not see (another process's, taken since): if its
        holder is dead, it is removed and the `up` runs again; if alive, ConcurrentUpdateError."""
        try:
            self._up(stack, tags, attempt)
        except ConcurrentUpdateError:
            if self._settle_locks(stack.name, provision) is not None:
                raise
            self._up(stack, tags, attempt)

    def _up(self, stack: auto.Stack, tags: Mapping[str, str], attempt: str) -> None:
        # Pending operations left by an interrupted `up` do not stop this one: the CLI warns and
        # carries on (pulumi pkg/resource/deploy/deployment_executor.go, v3.274.0), and the provider's
        # upsert adopts their objects.
        stack.up(message=stack_record.attempt_message(attempt), on_output=_debug, on_error=_debug)
        if stack_record.TAG_LAST_ERROR in tags:
            stack.remove_tag(stack_record.TAG_LAST_ERROR)

    def _record_error(self, provision: Provision, text: str) -> None:
        """Record a failed attempt; if the fleet was given up meanwhile (its pods cannot start), keep
        that reason and destroy what this `up` made: nobody else will (the task has ended)."""
        name = stack_record.stack_name(provision.name)
        try:
            with self._workspace(provision) as ws:
                stack = auto.Stack.select(name, ws)
                gave_up = stack.list_tags().get(stack_record.TAG_GAVE_UP) == "true"
                if not gave_up:
                    stack.set_tag(stack_record.TAG_LAST_ERROR, text)
            if gave_up and not self._ops.destroying(name):  # (a delete here already runs one)
                self._teardown_stack(name, None, None, abort=False)
        except CommandError:
            log.exception("stack %s: could not record the error %r", provision.name, text)

    def renew(self, name: str, owner: str, expires_at: float, holder: str = "") -> float:
        name = stack_record.stack_name(check_fleet_name(name))
        with self._stacks(_UnselectedWorkspace) as store:
            return lifecycle.renew(store, name, owner, expires_at, holder)

    def release(self, name: str, owner: str, holder: str) -> int | None:
        """The last lease destroys the stack as delete() does, and removes it: a shared stack is no
        tombstone, a later holder makes it again."""
        name = stack_record.stack_name(check_fleet_name(name))
        with self._stacks(_UnselectedWorkspace) as store:
            return lifecycle.release(store, name, owner, holder, self._clock())

    def _leases(self, name: str, tags: Mapping[str, str]) -> dict[str, float]:
        """A shared stack's leases, holder -> expiry: its lease objects (replicas.Backend.leases), which
        a concurrent tag write can neither lose nor bring back. The lease tags are a mirror for
        operators; {} for a fleet of one execution's own."""
        return self._backend.leases(name) if stack_record.TAG_SHARE in tags else {}

    def _lease_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._lease_locks.setdefault(name, threading.Lock())

    @contextmanager
    def _stacks(self, workspace: type[auto.LocalWorkspace]) -> Iterator[_StackStore]:
        with self._workspace(None, workspace=workspace) as ws:
            yield _StackStore(self, ws)

    def _cannot_start(self, provision: Provision, why: str) -> Status:
        """Give up on a fleet its pods say cannot start: record why (the tags any replica reads), stop our
        own `up` and destroy what it made. An `up` on another replica ends at its timeout and, finding
        the give-up, destroys then (`_record_error`)."""
        name = stack_record.stack_name(provision.name)
        text = stack_record.clip(f"the fleet cannot start: {why}")
        with self._workspace(None, workspace=_UnselectedWorkspace) as ws:
            stack = auto.Stack.select(name, ws)
            stack.set_tag(stack_record.TAG_LAST_ERROR, text)
            stack.set_tag(stack_record.TAG_GAVE_UP, "true")
        self._start_destroy(name, None)
        log.warning("stack %s: %s; giving up", name, text)
        return Status(Phase.FAILED, message=(
            f"data service {provision.name} cannot start: {why}; what it made is being destroyed; fix the "
            "cause (image, Secret, resources, node capacity) and re-run the task"))

    def _pod_reader(self) -> PodReader | None:
        """The fleets' pod reader, made once; None where no cluster is configured (tests, local runs):
        the status is then the stack's alone."""
        with self._lock:
            if self._pods is None:
                try:
                    self._pods = KubernetesPods(self.settings.kubeconfig)
                except Exception as err:  # noqa: BLE001 - no cluster config: progress stays coarse
                    log.warning("fleet pods cannot be read (%s); status reports Pulumi progress only", err)
                    self._pods = False
            return self._pods if not isinstance(self._pods, bool) else None

    def _gave_up_status(self, name: str, tags: Mapping[str, str], destroyed: bool) -> Status:
        tried = stack_record.attempts(tags)
        last_error = tags.get(stack_record.TAG_LAST_ERROR, "") or "no error recorded"
        what = "destroyed" if destroyed else "being destroyed"
        return Status(Phase.FAILED, message=(
            f"pulumi up failed {tried} times for stack {name}: {last_error}; what it made is {what}; fix "
            "the cause (image, quota, spec) and re-run the task"))

    def _expired(self, provision: Provision) -> bool:
        return self._clock() >= provision.expires_at

    @staticmethod
    def _expired_status(provision: Provision) -> Status:
        return Status(Phase.FAILED, message=f"data service {provision.name} expired (ttl_seconds "
                                            f"{provision.spec.ttl_seconds}) before it was ready; nothing is "
                                            "created past its expiry")

    def _repaired_tags(self, stack: auto.Stack, provision: Provision) -> dict[str, str]:
        """The stack's tags, with the record (owner, execution, expiry) written back where it is
        missing: a failed or lost tag write would leave the fleet invisible to gc and releases."""
        tags = dict(stack.list_tags())
        missing = stack_record.missing_record(tags, provision.owner, provision.execution,
                                              provision.expires_at)
        if provision.holder and not self._expired(provision):
            if provision.holder not in self._leases(stack.name, tags):  # the stack made by another's `up`
                self._backend.put_lease(stack.name, provision.holder, float(int(provision.expires_at)))
            if provision.holder not in stack_record.leases_of(tags):  # the mirror lost to a concurrent write
                missing |= stack_record.lease_tag(provision.holder, provision.expires_at)
        for key, value in missing.items():
            log.warning("stack %s: restoring its %s tag", stack.name, key)
            stack.set_tag(key, value)
            tags[key] = value
        return tags

    def _create_tombstone(self, name: str, owner: str, ws: auto.LocalWorkspace) -> auto.Stack:
        """An empty stack recorded under `owner`, which the caller destroys: the destroy in its history
        stops any `up` still queued for the fleet from creating it."""
        try:
            stack = auto.Stack.create(name, ws)
        except StackAlreadyExistsError:  # its `up` made it meanwhile: destroyed as it is
            return auto.Stack.select(name, ws)
        stack.set_tag(stack_record.TAG_OWNER, stack_record.clip(owner))
        stack.set_tag(stack_record.TAG_MANAGED, "true")
        stack.set_tag(stack_record.TAG_EXPIRES, str(int(self._clock() + stack_record.TOMBSTONE_SECONDS)))
        return stack

    def _refuse_if_tombstoned(self, name: str, work_dir: str) -> None:
        """The fleet program's guard: runs while the `up` holds the lock, so a destroy that ended before
        it is in the history, and one that starts later waits for the lock."""
        if self._ops.stopping(name):
            raise RuntimeError(f"{_TOMBSTONED}: stack {name} is being destroyed; this up creates nothing")
        shown = self._command.run(["stack", "history", "--json", "--stack", name], work_dir,
                                  {"PULUMI_BACKEND_URL": self.settings.backend_url})
        if stack_record.is_tombstone([entry.get("kind", "") for entry in json.loads(shown.stdout or "[]")]):
            raise RuntimeError(f"{_TOMBSTONED}: stack {name} was deleted; this up creates nothing")

    def _create_or_select(self, name: str, ws: auto.LocalWorkspace, provision: Provision) -> auto.Stack:
        try:
            return auto.Stack.select(name, ws)
        except StackNotFoundError:
            pass
        try:
            stack = auto.Stack.create(name, ws)
        except StackAlreadyExistsError:  # another replica made it between our select and init
            return auto.Stack.select(name, ws)
        tags = stack_record.initial_tags(provision.owner, provision.execution, provision.expires_at)
        if provision.holder:  # the lease before the tags: whoever sees the share tag sees the lease
            self._backend.put_lease(name, provision.holder, float(int(provision.expires_at)))
            tags |= stack_record.shared_tags(str(provision.spec.share), leases.fleet_shape(
                provision.spec.to_custom()), provision.holder, provision.expires_at)
        for key, value in tags.items():
            stack.set_tag(key, value)
        return stack

    def _operation_timeout(self, provision: Provision | None) -> float:
        """How long an `up` may run: at least pulumi-kubernetes' wait for this fleet, plus a margin."""
        if provision is None:
            return self.settings.operation_timeout_seconds
        return max(self.settings.operation_timeout_seconds,
                   await_timeout_seconds(provision.spec) + _CLI_MARGIN_SECONDS)

    def _destroy(self, stack: auto.Stack, provision: Provision | None, remove: bool = True) -> None:
        """Destroy, and remove the stack unless it stays as a tombstone; a stale lock is cleared
        first. Any other failure raises. Pending creates of an interrupted `up` are adopted into the
        state first, or their objects would outlive the stack (flyte_agent/pending_creates.py)."""
        try:
            self._adopt_pending_creates(stack)
            stack.destroy(on_output=_debug, on_error=_debug)
        except ConcurrentUpdateError:
            if self._settle_locks(stack.name, provision) is not None:
                raise
            self._adopt_pending_creates(stack)
            stack.destroy(on_output=_debug, on_error=_debug)
        if remove:
            stack.workspace.remove_stack(stack.name)
            self._backend.drop_leases(stack.name)

    def _adopt_pending_creates(self, stack: auto.Stack) -> None:
        exported = stack.export_stack()
        adopted = pending_creates.adopt(exported.deployment or {}, self.settings.namespace)
        if adopted is not None:
            log.warning("stack %s: adopting the pending creates of an interrupted up before destroying it",
                        stack.name)
            stack.import_stack(auto.Deployment(version=exported.version, deployment=adopted))

    def _ready(self, stack: auto.Stack, last: auto.UpdateSummary, provision: Provision) -> Status:
        """A stack whose last update succeeded: READY once its endpoints answer. After the first such read,
        one CLI call (the history that showed the success): the endpoints are that update's, and the
        record was checked (and repaired) within `_RECORD_CHECK_SECONDS`."""
        seen = self._seen_up(stack, last)
        if time.monotonic() - seen.record_checked >= _RECORD_CHECK_SECONDS:
            self._repaired_tags(stack, provision)
            seen.record_checked = time.monotonic()
        endpoints = seen.endpoints
        if not endpoints:
            return Status(Phase.FAILED, message=f"stack {stack.name}: pulumi up succeeded but exported no "
                                                "endpoints; the fleet program is broken")
        if self.settings.check_endpoints:
            down = self._health(endpoints)
            if down:
                return Status(Phase.UPDATING, endpoints, message=(
                    f"stack {stack.name} is up but {len(down)} endpoint(s) do not answer gRPC health "
                    f"SERVING yet: {', '.join(down)}"))
        return Status(Phase.READY, endpoints, message=f"stack {stack.name} is up")

    def _seen_up(self, stack: auto.Stack, last: auto.UpdateSummary) -> _SeenUp:
        """What this process knows of the succeeded update `last` (the stack's latest history entry): its
        endpoints, read once. A stack's outputs change only by an operation, which would be a newer
        history entry (a destroy: a tombstone), so they are that update's for good."""
        update = (last.start_time, last.end_time)
        with self._lock:
            seen = self._seen_ups.get(stack.name)
        if seen is not None and seen.update == update:
            return seen
        # One `stack output` call, where the API's outputs() makes two (masked and plain, to flag
        # secrets): the endpoints are never secret.
        ws = stack.workspace
        shown = self._command.run(["stack", "output", "--json", "--stack", stack.name], ws.work_dir,
                                  ws.env_vars)
        seen = _SeenUp(update, list(json.loads(shown.stdout).get("endpoints") or []), record_checked=0.0)
        with self._lock:
            self._seen_ups.pop(stack.name, None)
            self._seen_ups[stack.name] = seen
            while len(self._seen_ups) > _SEEN_UPS_MAX:  # oldest first: fleets long gone
                del self._seen_ups[next(iter(self._seen_ups))]
        return seen

    @contextmanager
    def _workspace(self, provision: Provision | None,
                   workspace: type[auto.LocalWorkspace] = auto.LocalWorkspace,
                   ) -> Iterator[auto.LocalWorkspace]:
        """A throw-away work dir with explicit project settings (the Python API ignores stackConfigDir)."""
        if provision is not None:
            self._command.set_timeout(stack_record.stack_name(provision.name),
                                      self._operation_timeout(provision))
        with tempfile.TemporaryDirectory(prefix="graphfleet-stack-") as work_dir:
            program = _no_program  # destroy does not run one, but an inline workspace needs one to exist
            if provision is not None:
                guard = functools.partial(self._refuse_if_tombstoned, stack_record.stack_name(provision.name),
                                          work_dir)
                program = fleet_program(provision, self.settings, guard)
            yield workspace(
                work_dir=work_dir,
                program=program,
                project_settings=auto.ProjectSettings(
                    name=stack_record.PROJECT, runtime="python",
                    backend=auto.ProjectBackend(url=self.settings.backend_url)),
                secrets_provider=self.settings.secrets_provider or "passphrase",
                # Work dirs are thrown away, and with them the Pulumi.<stack>.yaml naming the stack's
                # secrets provider: without this the CLI falls back to passphrase, not to the state's.
                env_vars={"PULUMI_BACKEND_URL": self.settings.backend_url,
                          "PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER": "true"},
                pulumi_command=self._command)

    def _sweep(self) -> None:
        self._observe()  # the fleet gauges from the replica's start, not one gc interval later
        while not self._stop.wait(self.settings.gc_interval_seconds):
            try:
                removed = self.gc(self._clock())
            except GcError as err:
                log.error("%s", err)
            except Exception:  # noqa: BLE001 - the sweep must outlive one bad pass
                log.exception("garbage collection pass failed")
            else:
                if removed:
                    log.info("garbage-collected expired fleets: %s", ", ".join(removed))
            self._observe()


@dataclass
class _SeenUp:
    """A succeeded update of a stack, as this process read it (`_seen_up`)."""

    update: tuple[Any, Any]  # the history entry's start and end time: which update
    endpoints: list[str]
    record_checked: float  # time.monotonic() of the last record check on a READY read (0: none yet)


class _UnselectedWorkspace(auto.LocalWorkspace):
    """A workspace for reads: every Stack call names its stack (`--stack`), so `pulumi stack select`
    would only check that the stack exists, one more CLI process per status read; the first read
    raises StackNotFoundError instead."""

    def select_stack(self, stack_name: str) -> None:
        pass


class PodReader(Protocol):
    """What the provisioner reads of a fleet's pods (flyte_agent/pods.py `KubernetesPods`)."""

    def pods(self, namespace: str, fleet: str) -> dict[str, Any] | None: ...

    def create_failures(self, namespace: str, fleet: str) -> list[Any] | None: ...

    def log_tail(self, server: ServerState) -> str: ...


def _no_program() -> None:
    pass


def _default_health(endpoints: list[str]) -> list[str]:
    from graph_engine.health import not_ready

    return not_ready(endpoints)


def _debug(line: str) -> None:
    log.debug("%s", line)


def _described(err: BaseException) -> str:
    return error_text(err) if isinstance(err, CommandError) else str(err)


class _StackStore:
    """The Pulumi `lifecycle.FleetStore`: a stack's tags and its lease objects (replicas.Backend), read
    in one workspace; lease changes of a stack are serialized in this process (tag writes are
    read-modify-write)."""

    label = "pulumi"

    def __init__(self, provisioner: PulumiProvisioner, ws: auto.LocalWorkspace) -> None:
        self._fleets = provisioner
        self._ws = ws

    def names(self) -> list[str]:
        """Every stack but those this process is busy with (their outcome is its workers' to record)."""
        names = [stack_record.short_stack_name(summary.name) for summary in self._ws.list_stacks()]
        return [name for name in names if self._fleets._ops.busy(name) is None]

    def lock(self, name: str) -> threading.Lock:
        return self._fleets._lease_lock(name)

    def read(self, name: str) -> lifecycle.FleetRecord | None:
        stack = auto.Stack.select(name, self._ws)
        try:
            tags = stack.list_tags()
        except StackNotFoundError:
            return None
        deleted = tags.get(stack_record.TAG_DELETED) == "true"
        held = self._fleets._leases(name, tags) if stack_record.TAG_SHARE in tags else None
        # Only stacks graphfleet made expire; a shared one's expiry is its latest lease object's, which
        # a concurrent tag write can neither lose nor bring back.
        expiry = (leases.expiry(held) if held is not None and not deleted
                  else stack_record.expires_at(tags))
        if tags.get(stack_record.TAG_MANAGED) != "true" or expiry is None:
            expiry = math.inf
        return lifecycle.FleetRecord(
            name=name, owner=tags.get(stack_record.TAG_OWNER),
            execution=tags.get(stack_record.TAG_EXECUTION, ""), expires_at=expiry, leases=held,
            shape=stack_record.spec_of(tags) or {}, tombstone=deleted, source=(stack, tags))

    def reread(self, record: lifecycle.FleetRecord) -> lifecycle.FleetRecord | None:
        """The lease objects again (a lease taken since the read counts); the tags as read: one tag
        read a pass, since each costs a CLI process."""
        if record.leases is None or record.tombstone or record.expires_at == math.inf:
            return record
        held = self._fleets._backend.leases(record.name)
        return dataclasses.replace(record, leases=held, expires_at=leases.expiry(held))

    def when(self, expires_at: float) -> float:
        return float(int(expires_at))

    def put_lease(self, record: lifecycle.FleetRecord, holder: str, expires_at: float) -> None:
        stack, _ = record.source
        self._fleets._backend.put_lease(record.name, holder, expires_at)
        for key, value in stack_record.lease_tag(holder, expires_at).items():  # the operators' mirror
            stack.set_tag(key, value)

    def drop_lease(self, record: lifecycle.FleetRecord, holder: str) -> None:
        stack, tags = record.source
        self._fleets._backend.drop_lease(record.name, holder)
        if stack_record.lease_key(holder) in tags:
            stack.remove_tag(stack_record.lease_key(holder))

    def put_expiry(self, record: lifecycle.FleetRecord, expires_at: float) -> None:
        stack, _ = record.source
        stack.set_tag(stack_record.TAG_EXPIRES, str(int(expires_at)))

    def stop(self, record: lifecycle.FleetRecord, owner: str | None) -> None:
        """gc destroys on its own sweep thread; a release for `owner` within delete()'s bounded wait."""
        if owner is None:
            self._fleets._destroy(record.source[0], None)
        else:
            self._fleets.delete(record.name, owner)

    def remove(self, name: str) -> None:
        self._ws.remove_stack(name)
        self._fleets._backend.drop_leases(name)
