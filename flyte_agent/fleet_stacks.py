"""The fleet stacks in the state backend: each step flyte_agent/pulumi_provisioner.py takes on one.

Select or create a stack with its first tags, repair its record, run one `up` attempt and record its
outcome, read a succeeded update's outputs, tear a fleet down (a tombstone, or a removal for a shared
one) and destroy a stack (adopting an interrupted `up`'s pending creates), settle a dead holder's
lock; and `StackStore`, the lifecycle's store over the stacks' tags and lease objects
(flyte_agent/lifecycle.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pulumi import automation as auto
from pulumi.automation.errors import (
    CommandError,
    ConcurrentUpdateError,
    StackAlreadyExistsError,
    StackNotFoundError,
)

from flyte_agent import leases, lifecycle, pending_creates, replicas, stack_record
from flyte_agent.fleet_program import fleet_program
from flyte_agent.provisioner import Provision, Status, check_owner
from flyte_agent.pulumi_cli import KILLED, NOT_STARTED, TimedPulumiCommand, cli_output, error_text
from flyte_agent.settings import Settings
from flyte_agent.stack_operations import StackOperations
from infra.graph_service import await_timeout_seconds

log = logging.getLogger(__name__)

# Beyond the StatefulSet's await: the provider's other objects, state writes, plugin start-up.
_CLI_MARGIN_SECONDS = 300
# What the fleet program's guard raises when the stack is a tombstone (see _refuse_if_tombstoned).
TOMBSTONED = "graphfleet: tombstoned"
# What the CLI prints when SIGINT/SIGTERM cancels an operation (pulumi pkg/backend/cancellation_scope.go,
# v3.274.0: "^C received; cancelling." / "SIGTERM received; cancelling."): a drain, a rollout.
_CANCELLED = "received; cancelling"
# Succeeded updates remembered (`seen_up`): far more than the fleets one connector serves at once.
_SEEN_UPS_MAX = 4096


class FleetStacks:
    """The stacks of one state backend, as this process reaches them (through `command`)."""

    def __init__(self, settings: Settings, command: TimedPulumiCommand, ops: StackOperations,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.state_files = replicas.StateFiles(settings.backend_url)
        self.liveness = replicas.Liveness(self.state_files, settings.heartbeat_seconds, clock)
        self._command = command
        self._ops = ops
        self._clock = clock
        self._lock = threading.Lock()
        # One lease change of a stack at a time in this process (tag writes are read-modify-write).
        self._lease_locks: dict[str, threading.Lock] = {}
        self._seen_ups: dict[str, SeenUp] = {}  # by stack: what its latest succeeded update exported

    def busy(self, name: str) -> Status | None:
        return self._ops.busy(name)

    @contextmanager
    def workspace(self, provision: Provision | None,
                   workspace: type[auto.LocalWorkspace] = auto.LocalWorkspace,
                   ) -> Iterator[auto.LocalWorkspace]:
        """A throw-away work dir with explicit project settings (the Python API ignores stackConfigDir)."""
        if provision is not None:
            self._command.set_timeout(stack_record.stack_name(provision.name),
                                      self.operation_timeout(provision))
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

    @contextmanager
    def store(self, workspace: type[auto.LocalWorkspace],
              delete: Callable[[str, str], None]) -> Iterator[StackStore]:
        """The lifecycle's store over the stacks, in one workspace; `delete` is how a release stops a
        fleet for its owner (the provisioner's bounded delete)."""
        with self.workspace(None, workspace=workspace) as ws:
            yield StackStore(self, ws, delete)

    def operation_timeout(self, provision: Provision | None) -> float:
        """How long an `up` may run: at least pulumi-kubernetes' wait for this fleet, plus a margin."""
        if provision is None:
            return self.settings.operation_timeout_seconds
        return max(self.settings.operation_timeout_seconds,
                   await_timeout_seconds(provision.spec) + _CLI_MARGIN_SECONDS)

    def _refuse_if_tombstoned(self, name: str, work_dir: str) -> None:
        """The fleet program's guard: runs while the `up` holds the lock, so a destroy that ended before
        it is in the history, and one that starts later waits for the lock."""
        if self._ops.stopping(name):
            raise RuntimeError(f"{TOMBSTONED}: stack {name} is being destroyed; this up creates nothing")
        shown = self._command.run(["stack", "history", "--json", "--stack", name], work_dir,
                                  {"PULUMI_BACKEND_URL": self.settings.backend_url})
        if stack_record.is_tombstone([entry.get("kind", "") for entry in json.loads(shown.stdout or "[]")]):
            raise RuntimeError(f"{TOMBSTONED}: stack {name} was deleted; this up creates nothing")

    def create_or_select(self, name: str, ws: auto.LocalWorkspace, provision: Provision) -> auto.Stack:
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
            self.state_files.put_lease(name, provision.holder, float(int(provision.expires_at)))
            tags |= stack_record.shared_tags(str(provision.spec.share), leases.fleet_shape(
                provision.spec.to_custom()), provision.holder, provision.expires_at)
        for key, value in tags.items():
            stack.set_tag(key, value)
        return stack

    def create_tombstone(self, name: str, owner: str, ws: auto.LocalWorkspace) -> auto.Stack:
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

    def destroy(self, stack: auto.Stack, provision: Provision | None, remove: bool = True) -> None:
        """Destroy, and remove the stack unless it stays as a tombstone; a stale lock is cleared
        first. Any other failure raises. Pending creates of an interrupted `up` are adopted into the
        state first, or their objects would outlive the stack (flyte_agent/pending_creates.py)."""
        try:
            self._adopt_pending_creates(stack)
            stack.destroy(on_output=log_cli_line, on_error=log_cli_line)
        except ConcurrentUpdateError:
            if self.settle_locks(stack.name, provision) is not None:
                raise
            self._adopt_pending_creates(stack)
            stack.destroy(on_output=log_cli_line, on_error=log_cli_line)
        if remove:
            stack.workspace.remove_stack(stack.name)
            self.state_files.drop_leases(stack.name)

    def _adopt_pending_creates(self, stack: auto.Stack) -> None:
        exported = stack.export_stack()
        adopted = pending_creates.adopt(exported.deployment or {}, self.settings.namespace)
        if adopted is not None:
            log.warning("stack %s: adopting the pending creates of an interrupted up before destroying it",
                        stack.name)
            stack.import_stack(auto.Deployment(version=exported.version, deployment=adopted))

    def settle_locks(self, name: str, provision: Provision | None) -> replicas.LockFile | None:
        """The one lock step (flyte_agent/replicas.py `Liveness.settle`): dead holders' lock files go, a
        live holder's lock is returned, never broken. Pending creates a dead `up` left stay in the state:
        the next `up` carries them over (pulumi pkg/backend/journal.go, v3.274.0) and its provider
        upserts their objects, and a destroy adopts them (flyte_agent/pending_creates.py). Clearing them
        (`refresh --clear-pending-creates`) left a window where a replica dying before its `up` lost
        them from every record."""
        return self.liveness.settle(stack_record.PROJECT, name, self.operation_timeout(provision))

    def leases(self, name: str, tags: Mapping[str, str]) -> dict[str, float]:
        """A shared stack's leases, holder -> expiry: its lease objects (replicas.StateFiles.leases), which
        a concurrent tag write can neither lose nor bring back. The lease tags are a mirror for
        operators; {} for a fleet of one execution's own."""
        return self.state_files.leases(name) if stack_record.TAG_SHARE in tags else {}

    def lease_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._lease_locks.setdefault(name, threading.Lock())

    def seen_up(self, stack: auto.Stack, last: auto.UpdateSummary) -> SeenUp:
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
        seen = SeenUp(update, list(json.loads(shown.stdout).get("endpoints") or []), record_checked=0.0)
        with self._lock:
            self._seen_ups.pop(stack.name, None)
            self._seen_ups[stack.name] = seen
            while len(self._seen_ups) > _SEEN_UPS_MAX:  # oldest first: fleets long gone
                del self._seen_ups[next(iter(self._seen_ups))]
        return seen

    def repaired_tags(self, stack: auto.Stack, provision: Provision) -> dict[str, str]:
        """The stack's tags, with the record (owner, execution, expiry) written back where it is
        missing: a failed or lost tag write would leave the fleet invisible to gc and releases."""
        tags = dict(stack.list_tags())
        missing = stack_record.missing_record(tags, provision.owner, provision.execution,
                                              provision.expires_at)
        if provision.holder and not self._clock() >= provision.expires_at:
            if provision.holder not in self.leases(stack.name, tags):  # the stack made by another's `up`
                self.state_files.put_lease(stack.name, provision.holder, float(int(provision.expires_at)))
            if provision.holder not in stack_record.leases_of(tags):  # the mirror lost to a concurrent write
                missing |= stack_record.lease_tag(provision.holder, provision.expires_at)
        for key, value in missing.items():
            log.warning("stack %s: restoring its %s tag", stack.name, key)
            stack.set_tag(key, value)
            tags[key] = value
        return tags

    def teardown(self, name: str, owner: str | None, up: Future[None] | None, abort: bool) -> None:
        if up is not None and not up.cancelled():
            try:
                up.result(timeout=self.settings.command_timeout_seconds)
            except TimeoutError as err:
                raise RuntimeError(f"stack {name}: the running pulumi up did not stop within "
                                   f"{self.settings.command_timeout_seconds:g}s; retry the delete") from err
            except Exception:  # noqa: BLE001 - the interrupted up's own failure is expected here
                pass
        # Without the fleet's program: destroy never runs it, and a name-only teardown has no spec.
        with self.workspace(None) as ws:
            try:
                stack = auto.Stack.select(name, ws)
            except StackNotFoundError:
                if not abort or owner is None:
                    return  # nothing to release
                stack = self.create_tombstone(name, owner, ws)
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
                    self.destroy(stack, None, remove=True)
                    return
            self.destroy(stack, None, remove=False)
            stack.set_tag(stack_record.TAG_DELETED, "true")

    def converge(self, provision: Provision) -> None:
        """One attempt to bring the stack to "up succeeded"; runs on a worker thread."""
        name = stack_record.stack_name(provision.name)
        if self._clock() >= provision.expires_at:
            return  # past its time to live: nothing brings it up (gc collects what exists)
        try:
            with self.workspace(provision) as ws:
                stack = self.create_or_select(name, ws, provision)
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
                    if self.settle_locks(name, provision) is not None:
                        return
                    tried -= 1
                if tried >= self.settings.max_attempts:
                    stack.set_tag(stack_record.TAG_GAVE_UP, "true")
                    return
                if self.retry_wait(tags) > 0:
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
            if TOMBSTONED in cli_output(err):
                log.info("stack %s: deleted before its queued up ran; nothing created", name)
                return
            if NOT_STARTED in cli_output(err):  # an attempt without a result: the next one takes its place
                log.info("stack %s: pulumi up not started; this connector is shutting down", name)
                return
            log.warning("stack %s: pulumi up failed: %s", name, error_text(err))
            self.record_error(provision, error_text(err))
        except Exception as err:  # noqa: BLE001 - a worker must record every failure on the stack
            log.exception("stack %s: converge failed", name)
            self.record_error(provision, stack_record.clip(f"{type(err).__name__}: {err}"))

    def retry_wait(self, tags: Mapping[str, str]) -> float:
        return stack_record.retry_wait(tags, self.settings.retry_backoff_seconds, self._clock())

    def _up_or_settle(self, stack: auto.Stack, tags: Mapping[str, str], attempt: str,
                      provision: Provision) -> None:
        """`up`; on a lock the settling before it did not see (another process's, taken since): if its
        holder is dead, it is removed and the `up` runs again; if alive, ConcurrentUpdateError."""
        try:
            self._up(stack, tags, attempt)
        except ConcurrentUpdateError:
            if self.settle_locks(stack.name, provision) is not None:
                raise
            self._up(stack, tags, attempt)

    def _up(self, stack: auto.Stack, tags: Mapping[str, str], attempt: str) -> None:
        # Pending operations left by an interrupted `up` do not stop this one: the CLI warns and
        # carries on (pulumi pkg/resource/deploy/deployment_executor.go, v3.274.0), and the provider's
        # upsert adopts their objects.
        stack.up(message=stack_record.attempt_message(attempt), on_output=log_cli_line, on_error=log_cli_line)
        if stack_record.TAG_LAST_ERROR in tags:
            stack.remove_tag(stack_record.TAG_LAST_ERROR)

    def record_error(self, provision: Provision, text: str) -> None:
        """Record a failed attempt; if the fleet was given up meanwhile (its pods cannot start), keep
        that reason and destroy what this `up` made: nobody else will (the task has ended)."""
        name = stack_record.stack_name(provision.name)
        try:
            with self.workspace(provision) as ws:
                stack = auto.Stack.select(name, ws)
                gave_up = stack.list_tags().get(stack_record.TAG_GAVE_UP) == "true"
                if not gave_up:
                    stack.set_tag(stack_record.TAG_LAST_ERROR, text)
            if gave_up and not self._ops.destroying(name):  # (a delete here already runs one)
                self.teardown(name, None, None, abort=False)
        except CommandError:
            log.exception("stack %s: could not record the error %r", provision.name, text)


@dataclass
class SeenUp:
    """A succeeded update of a stack, as this process read it (`FleetStacks.seen_up`)."""

    update: tuple[Any, Any]  # the history entry's start and end time: which update
    endpoints: list[str]
    record_checked: float  # time.monotonic() of the last record check on a READY read (0: none yet)


class UnselectedWorkspace(auto.LocalWorkspace):
    """A workspace for reads: every Stack call names its stack (`--stack`), so `pulumi stack select`
    would only check that the stack exists, one more CLI process per status read; the first read
    raises StackNotFoundError instead."""

    def select_stack(self, stack_name: str) -> None:
        pass


class StackStore:
    """The Pulumi `lifecycle.FleetStore`: a stack's tags and its lease objects (replicas.StateFiles), read
    in one workspace; lease changes of a stack are serialized in this process (tag writes are
    read-modify-write)."""

    label = "pulumi"

    def __init__(self, stacks: FleetStacks, ws: auto.LocalWorkspace,
                 delete: Callable[[str, str], None]) -> None:
        self._stacks = stacks
        self._ws = ws
        self._delete = delete

    def names(self) -> list[str]:
        """Every stack but those this process is busy with (their outcome is its workers' to record)."""
        names = [stack_record.short_stack_name(summary.name) for summary in self._ws.list_stacks()]
        return [name for name in names if self._stacks.busy(name) is None]

    def lock(self, name: str) -> threading.Lock:
        return self._stacks.lease_lock(name)

    def read(self, name: str) -> lifecycle.FleetRecord | None:
        stack = auto.Stack.select(name, self._ws)
        try:
            tags = stack.list_tags()
        except StackNotFoundError:
            return None
        deleted = tags.get(stack_record.TAG_DELETED) == "true"
        held = self._stacks.leases(name, tags) if stack_record.TAG_SHARE in tags else None
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
        held = self._stacks.state_files.leases(record.name)
        return dataclasses.replace(record, leases=held, expires_at=leases.expiry(held))

    def when(self, expires_at: float) -> float:
        return float(int(expires_at))

    def put_lease(self, record: lifecycle.FleetRecord, holder: str, expires_at: float) -> None:
        stack, _ = record.source
        self._stacks.state_files.put_lease(record.name, holder, expires_at)
        for key, value in stack_record.lease_tag(holder, expires_at).items():  # the operators' mirror
            stack.set_tag(key, value)

    def drop_lease(self, record: lifecycle.FleetRecord, holder: str) -> None:
        stack, tags = record.source
        self._stacks.state_files.drop_lease(record.name, holder)
        if stack_record.lease_key(holder) in tags:
            stack.remove_tag(stack_record.lease_key(holder))

    def put_expiry(self, record: lifecycle.FleetRecord, expires_at: float) -> None:
        stack, _ = record.source
        stack.set_tag(stack_record.TAG_EXPIRES, str(int(expires_at)))

    def stop(self, record: lifecycle.FleetRecord, owner: str | None) -> None:
        """gc destroys on its own sweep thread; a release for `owner` within delete()'s bounded wait."""
        if owner is None:
            self._stacks.destroy(record.source[0], None)
        else:
            self._delete(record.name, owner)

    def remove(self, name: str) -> None:
        self._ws.remove_stack(name)
        self._stacks.state_files.drop_leases(name)


def _no_program() -> None:
    pass


def log_cli_line(line: str) -> None:
    log.debug("%s", line)
