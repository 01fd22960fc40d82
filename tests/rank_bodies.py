"""Rank bodies for tests/test_ranks.py, in an importable module: a rank process imports them by name
(it never imports the test's or the caller's `__main__`). Also how a test finds the rank processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import psutil
import torch
import torch.distributed as dist

from workflows import ranks, train
from workflows.ranks import Rank
from workflows.train import TrainConfig, Trained


def leave_before_joining(how: str, rank: Rank, store: dist.Store | None) -> float:
    """Rank 0 joins the group and sums one value over the ranks; every other rank writes two lines
    and, before joining, exits with code 3 (`how="exit"`) or kills itself with SIGKILL (`"kill"`)."""
    if not rank.main:
        print(f"rank {rank.rank}: reading the graph", flush=True)
        print(f"rank {rank.rank}: no memory left for the features", file=sys.stderr, flush=True)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(3)
    with ranks.process_group(rank, store, torch.device("cpu"), timeout_seconds=300):
        return ranks.total([1.0], rank)[0]


def fit_announced(uri: str, config: TrainConfig, rank: Rank, store: dist.Store | None) -> Trained:
    """`train.fit_ranks`'s rank body (no fleet, no progress) after a line naming the rank: the last
    output a failed rank's report must show."""
    print(f"rank {rank.rank} of {rank.world}: training on {uri}", flush=True)
    return train._fit_rank(uri, config, [], False, rank, store)


def rank_pids() -> dict[int, int]:
    """The trainer rank processes this process runs (`python -m workflows.ranks RANK WORLD`): rank -> pid."""
    found = {}
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, IndexError, ValueError):
            command = child.cmdline()
            if command[1:3] == ["-m", "workflows.ranks"]:
                found[int(command[3])] = child.pid
    return found
