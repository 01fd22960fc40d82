"""A fixed number of worker threads that start the most urgent queued job first.

concurrent.futures' pool is first in, first out: at 64 fleets a destroy waited behind every queued
`up` (delete p50 63 s, docs/benchmarks.md). Here a destroy (which frees capacity) starts before any
queued `up` (which takes it), in submission order among equals.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

# Priorities, most urgent first.
DESTROY, UP = 0, 1
_STOP = 2
_Job = tuple[Future[None], Callable[[], None]]


class PriorityPool:
    def __init__(self, workers: int, name: str) -> None:
        # (priority, submission number, job); None is a worker's stop signal. The number breaks ties,
        # so futures are never compared.
        self._queue: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        # Daemons: an idle pool never holds the process open. A CLI call still running at exit is cut
        # off like a killed connector's; its stack's lock is recovered by whoever reads it next.
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, call: Callable[..., None], *args: Any) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the Pulumi provisioner is closed; it starts no new operations")
            self._queue.put((priority, next(self._order), (future, functools.partial(call, *args))))
        return future

    def close(self, wait: bool = True) -> None:
        """Cancel the queued jobs; with `wait`, also wait for the running ones."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while not self._queue.empty():
                _, _, job = self._queue.get_nowait()
                if job is not None:
                    job[0].cancel()
            for _ in self._threads:
                self._queue.put((_STOP, next(self._order), None))
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                call()
            except BaseException as err:  # noqa: BLE001 - the future hands it to whoever waits
                future.set_exception(err)
            else:
                future.set_result(None)
