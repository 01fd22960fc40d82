"""State-dir primitives the local records share: an exclusive flock and an atomic JSON write."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing): one writer across processes.

    The holder may remove the file when what it guards is gone (no lock files left behind), so a
    waiter may have locked a file that is no longer at `path`: it locks again until the file it
    holds is the one there."""
    while True:
        lock = open(path, "a")  # noqa: SIM115 - closed below or after the yield
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(lock.fileno()).st_ino:
            break
        lock.close()
    try:
        yield
    finally:
        lock.close()  # releases the flock


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a record."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
