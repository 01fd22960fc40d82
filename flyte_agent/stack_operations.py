"""The Pulumi operations this process runs, by stack: the provisioner's in-flight state, in one place.

Every fact about a fleet lives in its stack (flyte_agent/stack_record.py). What is kept here is about
this process alone and may be lost with it: which `up` and destroy its workers run or have queued,
for whom, and which `up`s a destroy is stopping. A restarted process reads the stacks again (a
dead `up` is an attempt without a result; a destroy is asked for again by its caller), and another
replica sees an operation running here by its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from flyte_agent.provisioner import DestroyInProgress, Phase, Status
from flyte_agent.worker_pool import DESTROY, UP, PriorityPool


class StackOperations:
    """A priority pool of workers (destroys first) and what each stack has queued or running on it."""

    def __init__(self, workers: int, interrupt: Callable[[str], int]) -> None:
        self._pool = PriorityPool(workers, name="pulumi")
        self._interrupt = interrupt  # SIGINT to a stack's running CLI operations (TimedPulumiCommand)
        self._lock = threading.Lock()
        self._ups: dict[str, Future[None]] = {}
        self._up_owners: dict[str, str] = {}
        self._destroys: dict[str, Future[None]] = {}  # kept until a caller has seen the outcome
        self._destroy_owners: dict[str, str | None] = {}  # on whose behalf (None: release, gc)
        # Stacks whose `up` a destroy stopped: the program's guard refuses them too, since an
        # interrupt before the `up`'s CLI process starts reaches nothing.
        self._stopping: set[str] = set()

    def busy(self, name: str) -> Status | None:
        """What this process's workers are doing with the stack, if anything."""
        with self._lock:
            busy = [(operation, job) for operation, job in (("destroy", self._destroys.get(name)),
                                                             ("up", self._ups.get(name)))
                    if job is not None and not job.done()]
        if not busy:
            return None
        operation, job = busy[0]
        if job.running():
            return Status(Phase.UPDATING, message=f"pulumi {operation} running for stack {name}")
        return Status(Phase.QUEUED, message=f"pulumi {operation} queued for stack {name}")

    def destroying(self, name: str) -> bool:
        with self._lock:
            job = self._destroys.get(name)
        return job is not None and not job.done()

    def stopping(self, name: str) -> bool:
        with self._lock:
            return name in self._stopping

    def start_up(self, name: str, owner: str, converge: Callable[[], None]) -> None:
        """Queue `converge` unless an `up` or a destroy of the stack is queued or running here."""
        with self._lock:
            busy = [self._ups.get(name), self._destroys.get(name)]
            if any(job is not None and not job.done() for job in busy):
                return
            self._ups[name] = self._pool.submit(UP, converge)
            self._up_owners[name] = owner

    def start_destroy(self, name: str, owner: str | None,
                      teardown: Callable[[Future[None] | None], None]) -> Future[None]:
        """The destroy of stack `name` that this process runs, started now (`teardown(up)`, with the
        `up` it stops) unless one is under way. With `owner`, only that owner's destroy is rejoined
        and only its own `up` stopped (None: release, gc, which chose the stack by its tags)."""
        with self._lock:
            job = self._destroys.get(name)
            if job is not None and self._destroy_owners.get(name) != owner:
                if not job.done():
                    raise DestroyInProgress(f"stack {name}: another teardown of it is running; ask again "
                                            "after it ends")
                job = None  # someone else's outcome: not this caller's to see
            if job is None:
                up = self._ups.get(name)
                # Stop our own `up` now, not from the queue: on a full pool the destroy would wait
                # behind it. SIGINT is Pulumi's graceful cancel, which releases the lock. Only for its
                # owner: a foreign teardown must not touch the fleet, not even its `up`.
                if up is not None and owner not in (None, self._up_owners.get(name)):
                    up = None
                if up is not None and not up.cancel() and not up.done():
                    self._stopping.add(name)
                    self._interrupt(name)
                job = self._destroys[name] = self._pool.submit(DESTROY, self._run_teardown, name, teardown,
                                                               up)
                self._destroy_owners[name] = owner
        return job

    def _run_teardown(self, name: str, teardown: Callable[[Future[None] | None], None],
                      up: Future[None] | None) -> None:
        try:
            teardown(up)
        finally:
            with self._lock:
                self._stopping.discard(name)

    def current_destroy(self, name: str) -> Future[None] | None:
        with self._lock:
            return self._destroys.get(name)

    def forget_destroy(self, name: str, job: Future[None]) -> None:
        """A caller has seen `job`'s outcome: the next destroy of the stack starts afresh."""
        with self._lock:
            if self._destroys.get(name) is job:
                del self._destroys[name]
            self._destroy_owners.pop(name, None)

    def close(self, wait: bool = True) -> None:
        self._pool.close(wait=wait)
