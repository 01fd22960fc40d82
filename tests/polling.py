"""Waiting in tests for a condition, never for a fixed time: one bounded poll loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(check: Callable[[], T | None], what: str | Callable[[], str], timeout: float = 60,
               interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy, and return that. After `timeout` seconds the
    test fails with `what` (a text, or a function that says what was seen last). `check` may assert."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what() if callable(what) else what}")
        time.sleep(interval)
