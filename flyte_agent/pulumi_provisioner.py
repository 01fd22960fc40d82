"""One ephemeral Pulumi stack per task execution, driven through the Automation API.

The stack in the state backend is the only record: its name comes from `Provision.name`,
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
interrupt a running `up`. What the stack's tags mean is flyte_agent/stack_record.py; each step on a
stack (an `up` attempt, a destroy, a record repair) is flyte_agent/fleet_stacks.py; this module
decides which step a call takes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait

from pulumi import automation as auto
from pulumi.automation.errors import (
    CommandError,
    ConcurrentUpdateError,
    StackNotFoundError,
)

from flyte_agent import lifecycle, metrics, pod_failures, stack_listing, stack_record
from flyte_agent.executions import Executions
from flyte_agent.fleet_program import fleet_args, warm_import_kubernetes
from flyte_agent.fleet_stacks import FleetStacks, UnselectedWorkspace
from flyte_agent.pods import KubernetesPods, PodReader, with_servers
from flyte_agent.provisioner import (
    DestroyInProgress,
    FleetInfo,
    GcError,
    Phase,
    Provision,
    Status,
    check_fleet_name,
    check_workflow_execution,
)
from flyte_agent.pulumi_cli import (
    TimedPulumiCommand,
    cli_output,
    error_text,
    interrupted,
)
from flyte_agent.settings import Settings
from flyte_agent.stack_operations import StackOperations

log = logging.getLogger(__name__)

# A READY stack's status read checks (and repairs) its record at most this often. The record only
# needs repair after a lost concurrent tag write, and every read before READY repairs it; a READY read
# otherwise costs one CLI call (`stack history`), and propeller polls every task every few seconds.
_RECORD_CHECK_SECONDS = 300.0
# How long close() lets cancelled CLI operations end gracefully (releasing their locks) before it kills
# them: a cancelled `up` ends within seconds; one that ignores SIGINT would otherwise hold close() forever.
_CLOSE_GRACE_SECONDS = 10.0
# The `passphrase` secrets provider reads one of these; the CLI fails without them non-interactively.
_PASSPHRASE_ENV = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")


class PulumiProvisioner:
    """`Provisioner` over ephemeral Pulumi stacks; see the module docstring for the state model."""

    def __init__(self, settings: Settings,
                 health: Callable[[list[str]], list[str]] | None = None,
                 clock: Callable[[], float] = time.time, executions: Executions | None = None,
                 pods: PodReader | None = None) -> None:
        if not settings.backend_url.startswith(("s3://", "file://")):
            raise ValueError(f"backend_url: {settings.backend_url!r} is not a self-managed state backend; "
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
        self.executions = executions
        self._command = TimedPulumiCommand(settings.pulumi_command, settings.operation_timeout_seconds,
                                           settings.command_timeout_seconds)
        self._ops = StackOperations(settings.max_concurrent_operations, self._command.interrupt)
        self.stacks = FleetStacks(settings, self._command, self._ops, clock)
        # release_execution()'s stack listings, by workflow execution: reads, off the operation pool.
        self._listings: dict[str, Future[tuple[list[str], list[tuple[str, str]]]]] = {}
        # ...and the stacks it is destroying, until a call has seen each outcome: a stack removed
        # before the next listing is still reported (and its destroy forgotten) by that call.
        self._releasing: dict[str, set[str]] = {}
        self._lister = ThreadPoolExecutor(settings.max_concurrent_operations,
                                          thread_name_prefix="pulumi-list")
        self._lock = threading.Lock()  # guards the maps above and below
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
        with self.stacks.store(UnselectedWorkspace, self.delete) as store, store.lock(name):
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
        with self.stacks.workspace(provision, workspace=UnselectedWorkspace) as ws:
            stack = auto.Stack.select(name, ws)
            try:
                # Self-managed state backends record an operation only when it ends: an `up` that is running,
                # or died with its process, is an attempt counted in the tags with no history entry.
                history = stack.history(show_secrets=False)
            except StackNotFoundError:
                if self._expired(provision):
                    return _expired_status(provision)
                self._enqueue(provision)
                return Status(Phase.QUEUED, message=f"stack {name} absent; pulumi up queued")
            if stack_record.is_tombstone([entry.kind for entry in history]):
                tags = stack.list_tags()
                if tags.get(stack_record.TAG_GAVE_UP) == "true":
                    return _gave_up_status(name, tags, destroyed=True)
                return Status(Phase.FAILED, message=f"data service {provision.name} was deleted (an abort or "
                                                    "a teardown); it is not brought back")
            last = history[0] if history else None
            if last is not None and last.kind == "update" and last.result == "succeeded":
                return self._ready(stack, last, provision)
            tags = self.stacks.repaired_tags(stack, provision)
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
                return _gave_up_status(name, tags, destroyed=False)
            if self._expired(provision):
                return _expired_status(provision)
            holder = self.stacks.settle_locks(name, provision) if not ended else None
            if holder is not None:
                # Round-robin GetTasks reach every replica: an `up` queued here would only fail on the
                # lock of the one running (issue 8 item 11).
                return Status(Phase.UPDATING, message=f"stack {name}: pulumi up attempt {tried} is running "
                                                      f"on {holder.hostname} (pid {holder.pid})")
            wait = self.stacks.retry_wait(tags) if ended else 0.0
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
                    stack_listing.stacks_of, self.stacks, workflow_execution)
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
        with self.stacks.store(auto.LocalWorkspace, self.delete) as store:
            done = lifecycle.collect(store, self.executions, now, self.settings.renew_seconds,
                                     failure=(CommandError, DestroyInProgress), describe=_described)
        metrics.observe_gc("pulumi", len(done.stopped), len(done.failures))
        if done.failures:
            raise GcError(done.stopped, done.failures)
        return done.stopped

    def fleets(self) -> list[FleetInfo]:
        """Every graphfleet stack, from its tags, history and outputs: no `up`, no health probe."""
        return stack_listing.fleet_infos(self.stacks, self._clock())

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
        self.stacks.liveness.stop()
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

    def _enqueue(self, provision: Provision) -> None:
        """An `up` attempt on a worker, unless one (or a destroy) is queued or running here."""
        self._ops.start_up(stack_record.stack_name(provision.name), provision.owner,
                           functools.partial(self.stacks.converge, provision))

    def _start_destroy(self, name: str, owner: str | None, abort: bool = False) -> Future[None]:
        """The destroy of stack `name` that this process runs (`StackOperations.start_destroy`)."""
        return self._ops.start_destroy(name, owner, lambda up: self.stacks.teardown(name, owner, up, abort))

    def renew(self, name: str, owner: str, expires_at: float, holder: str = "") -> float:
        name = stack_record.stack_name(check_fleet_name(name))
        with self.stacks.store(UnselectedWorkspace, self.delete) as store:
            return lifecycle.renew(store, name, owner, expires_at, holder)

    def release(self, name: str, owner: str, holder: str) -> int | None:
        """The last lease destroys the stack as delete() does, and removes it: a shared stack is no
        tombstone, a later holder makes it again."""
        name = stack_record.stack_name(check_fleet_name(name))
        with self.stacks.store(UnselectedWorkspace, self.delete) as store:
            return lifecycle.release(store, name, owner, holder, self._clock())

    def _cannot_start(self, provision: Provision, why: str) -> Status:
        """Give up on a fleet its pods say cannot start: record why (the tags any replica reads), stop our
        own `up` and destroy what it made. An `up` on another replica ends at its timeout and, finding
        the give-up, destroys then (`_record_error`)."""
        name = stack_record.stack_name(provision.name)
        text = stack_record.clip(f"the fleet cannot start: {why}")
        with self.stacks.workspace(None, workspace=UnselectedWorkspace) as ws:
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

    def _expired(self, provision: Provision) -> bool:
        return self._clock() >= provision.expires_at

    def _ready(self, stack: auto.Stack, last: auto.UpdateSummary, provision: Provision) -> Status:
        """A stack whose last update succeeded: READY once its endpoints answer. After the first such read,
        one CLI call (the history that showed the success): the endpoints are that update's, and the
        record was checked (and repaired) within `_RECORD_CHECK_SECONDS`."""
        seen = self.stacks.seen_up(stack, last)
        if time.monotonic() - seen.record_checked >= _RECORD_CHECK_SECONDS:
            self.stacks.repaired_tags(stack, provision)
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


def _default_health(endpoints: list[str]) -> list[str]:
    from graph_engine.health import not_ready

    return not_ready(endpoints)


def _described(err: BaseException) -> str:
    return error_text(err) if isinstance(err, CommandError) else str(err)


def _gave_up_status(name: str, tags: Mapping[str, str], destroyed: bool) -> Status:
    tried = stack_record.attempts(tags)
    last_error = tags.get(stack_record.TAG_LAST_ERROR, "") or "no error recorded"
    what = "destroyed" if destroyed else "being destroyed"
    return Status(Phase.FAILED, message=(
        f"pulumi up failed {tried} times for stack {name}: {last_error}; what it made is {what}; fix "
        "the cause (image, quota, spec) and re-run the task"))


def _expired_status(provision: Provision) -> Status:
    return Status(Phase.FAILED, message=f"data service {provision.name} expired (ttl_seconds "
                                        f"{provision.spec.ttl_seconds}) before it was ready; nothing is "
                                        "created past its expiry")
