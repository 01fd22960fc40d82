"""Data-parallel trainer ranks: who this process is, its shard of the seeds, and the collectives.

Ranks come from one of two places:
- a PyTorchJob (`GRAPHFLEET_TRAINER=pytorchjob`): the training operator gives every pod
  `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE` and `RANK` (the master is rank 0); `from_env` joins;
- locally: `local_ranks` runs rank 0 in this process and ranks 1..N-1 as fresh interpreters on this
  machine (`python -m workflows.ranks RANK WORLD`, handed the body by reference on standard input: they
  never import the caller's `__main__`, so a run from a script, `python -`, a notebook or `pyflyte run`
  is the same), joined through a TCP store on loopback that rank 0 opens on a free port.

Every collective is bounded by `timeout` (the process group's): a rank that hangs makes the others
raise instead of waiting forever, so the run fails and the fleet is still released. A local rank
process that exits or is killed, start-up included, fails the run within seconds: rank 0 watches the
processes and stops waiting to join the group as soon as one ends, and its next collective with a dead
peer fails at once (gloo sees the connection close; training makes one every step). `RankFailed`
gives the rank's exit cause and its last lines of output.
gloo on CPU, nccl when the trainer runs on CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import distributed_c10d

log = logging.getLogger("workflows.ranks")

# What the Kubeflow training operator sets in every PyTorchJob replica (torch's env:// rendezvous).
ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")

# Lines of a failed local rank's output that RankFailed shows.
TAIL_LINES = 20


@dataclass(frozen=True)
class Rank:
    """This process's place among `world` data-parallel trainers."""

    rank: int = 0
    world: int = 1
    colocated: int = 1  # ranks sharing this machine's cores (local ranks: all of them)

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of {self.world} trainers: need 0 <= rank < trainers")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


SINGLE = Rank()


def shard(ids: np.ndarray, rank: Rank, pad: bool) -> np.ndarray:
    """Every `world`-th id from `rank` on, like torch's DistributedSampler. With `pad` the ids are first
    extended by wrapping around so every rank gets the same count: ranks then take the same number of
    training steps, i.e. make the same collective calls. Without it (evaluation) each id is counted once."""
    if pad and len(ids) % rank.world:
        ids = np.resize(ids, -(-len(ids) // rank.world) * rank.world)
    return ids[rank.rank::rank.world]


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(rank: Rank, store: dist.Store | None, device: torch.device,
                  timeout_seconds: float) -> Iterator[Rank]:
    """The default process group for `rank`, destroyed on exit (a task process may train again).
    No store: torch's env:// rendezvous (MASTER_ADDR/PORT, as a PyTorchJob sets them)."""
    if not rank.parallel:
        yield rank
        return
    timeout = timedelta(seconds=timeout_seconds)
    # torch prefixes the group's store keys with a per-process group counter (it ignores group_name)
    # and resets it only when a destroy completes; after a failed run in this process the counter
    # is not 0 while a freshly spawned rank's is, and they never meet. Start every group at 0.
    if not dist.is_initialized():
        distributed_c10d._world.group_count = 0
    if store is None:
        dist.init_process_group(backend(device), init_method="env://", rank=rank.rank,
                                world_size=rank.world, timeout=timeout)
    else:
        dist.init_process_group(backend(device), store=store, rank=rank.rank, world_size=rank.world,
                                timeout=timeout)
    try:
        yield rank
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_env(environ: dict[str, str] | None = None) -> Rank | None:
    """This replica's rank in a PyTorchJob; None outside one (no `WORLD_SIZE`)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    missing = [k for k in ENV_KEYS if not env.get(k)]
    if missing:
        raise ValueError(f"a distributed trainer needs {', '.join(ENV_KEYS)}; {', '.join(missing)} unset "
                         "(the PyTorchJob operator sets them in every replica)")
    return Rank(int(env["RANK"]), int(env["WORLD_SIZE"]))


def average_gradients(model: nn.Module, rank: Rank) -> None:
    """Gradients summed over ranks and divided by their number: one all-reduce of one flat buffer."""
    if not rank.parallel:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= rank.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def total(values: Sequence[float], rank: Rank, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of `values` over ranks; every rank gets the same result."""
    if not rank.parallel:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return [float(v) for v in tensor]


def gather(value: int, rank: Rank) -> list[int]:
    """`value` of every rank, in rank order."""
    if not rank.parallel:
        return [value]
    out = [torch.zeros(1, dtype=torch.int64) for _ in range(rank.world)]
    dist.all_gather(out, torch.tensor([value], dtype=torch.int64))
    return [int(t) for t in out]


def broadcast_model(model: nn.Module, rank: Rank) -> None:
    """Rank 0's parameters on every rank (the same seed already builds the same model; this makes
    it so whatever the initialisation does)."""
    if rank.parallel:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


class RanksDiverged(RuntimeError):
    """Ranks ended with different models: data-parallel training is broken, not merely noisy."""


def check_same_model(model: nn.Module, rank: Rank) -> None:
    """Fail loudly unless every rank holds bit-identical parameters (a checksum per rank, gathered)."""
    if not rank.parallel:
        return
    mine = torch.tensor([float(p.detach().double().sum()) for p in model.state_dict().values()],
                        dtype=torch.float64)
    every = [torch.zeros_like(mine) for _ in range(rank.world)]
    dist.all_gather(every, mine)
    differ = [r for r, other in enumerate(every) if not torch.equal(other, every[0])]
    if differ:
        raise RanksDiverged(f"trainer ranks {differ} hold a different model than rank 0")


class RankFailed(RuntimeError):
    """A trainer rank exited with an error or was killed; the message names it (a local rank: also its
    exit cause and last lines of output)."""


class _RankProcess:
    """One local rank: a fresh interpreter running `python -m workflows.ranks RANK WORLD` on `work`
    (written to its standard input). Its stdout and stderr, one stream in the order written, are copied
    to this process's stderr line by line; the last lines are kept for a report of its failure."""

    def __init__(self, rank: Rank, work: bytes, on_end: Callable[[_RankProcess], None]) -> None:
        self.rank = rank
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.exit: int | None = None  # set once it ended and its output is read
        # The package's root on the path: a fast-registered Flyte task finds `workflows` only through
        # its own sys.path. Unbuffered: a killed rank's last lines are not lost in its buffer.
        path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                             os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "workflows.ranks", str(rank.rank), str(rank.world)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
        self._copier = threading.Thread(target=self._copy, name=f"trainer-rank-{rank.rank}-output",
                                        daemon=True)
        self._copier.start()
        threading.Thread(target=self._watch, args=(on_end,), name=f"trainer-rank-{rank.rank}-exit",
                         daemon=True).start()
        stdin = self._process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it ended before reading: _watch reports how
            with stdin:
                stdin.write(work)

    def _copy(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.tail.append(line)
            print(line, file=sys.stderr, flush=True)

    def _watch(self, on_end: Callable[[_RankProcess], None]) -> None:
        code = self._process.wait()
        self._copier.join(1.0)  # its last lines, unless a process it started still holds the pipe
        self.exit = code
        on_end(self)

    def report(self) -> str:
        """How it ended and its last lines of output (once it ended)."""
        code = self.exit or 0
        if code < 0:
            try:
                cause = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                cause = f"was killed by signal {-code}"
        else:
            cause = f"exited with code {code}"
        said = "\n".join(self.tail)
        return (f"rank {self.rank.rank} {cause}; "
                + (f"its last output:\n{said}" if said else "it wrote no output"))

    def stop(self) -> None:
        """Killed if it still runs, and reaped."""
        self._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)


class _RankProcesses:
    """Ranks 1..world-1 of a local run, watched from threads of this process: `failed()` knows a rank
    that ended badly as soon as it did."""

    def __init__(self, world: int, body: Callable[[Rank, dist.Store | None], Any], port: int) -> None:
        self._changed = threading.Condition()
        self._ended: list[_RankProcess] = []  # in the order they ended: the first is the likely cause
        # The caller's import path (the body's module may be found only through it), the store's port,
        # then the body, pickled by reference: a rank unpickles it once the path is set.
        work = pickle.dumps((sys.path, port)) + pickle.dumps(body)
        self.ranks = [_RankProcess(Rank(r, world, world), work, self._on_end) for r in range(1, world)]

    def _on_end(self, rank: _RankProcess) -> None:
        with self._changed:
            self._ended.append(rank)
            self._changed.notify_all()

    def failed(self) -> list[_RankProcess]:
        with self._changed:
            return [r for r in self._ended if r.exit]

    def wait(self, timeout: float, every: bool = False) -> bool:
        """Up to `timeout` s until a rank failed or (`every`) all ended; whether that happened."""
        with self._changed:
            return self._changed.wait_for(
                lambda: bool(self.failed()) or (every and len(self._ended) == len(self.ranks)), timeout)

    def names(self) -> str:
        """The ranks that failed, as 'rank 2 (exit -9), rank 1 (exit 1)'."""
        return ", ".join(f"rank {r.rank.rank} (exit {r.exit})" for r in self.failed())

    def reports(self) -> str:
        """Each failed rank's report, on lines of their own."""
        return "".join(f"\n{r.report()}" for r in self.failed())

    def stop(self) -> None:
        for rank in self.ranks:
            rank.stop()


class _WatchedStore(dist.Store):
    """Rank 0's view of the ranks' TCP store: a wait for keys (what joining the group is) ends as soon as
    a rank process failed, where the TCP store's own wait lasts its timeout. Other calls pass through."""

    def __init__(self, store: dist.Store, others: _RankProcesses, timeout_seconds: float) -> None:
        super().__init__()
        self._store, self._others, self._timeout = store, others, timeout_seconds

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        limit = self._timeout if timeout is None else timeout.total_seconds()
        deadline = time.monotonic() + limit
        while not self._store.check(keys):
            if self._others.wait(0.1):
                raise RankFailed("a trainer rank ended before the group formed")
            if time.monotonic() > deadline:
                raise dist.DistStoreError(f"timed out after {limit:g} s waiting for the other trainer ranks "
                                          f"(store keys {keys})")

    def get(self, key: str) -> bytes:
        self.wait([key])
        return self._store.get(key)

    def set(self, key: str, value: str) -> None:
        self._store.set(key, value)

    def add(self, key: str, value: int) -> int:
        return self._store.add(key, value)

    def check(self, keys: list[str]) -> bool:
        return self._store.check(keys)

    def compare_set(self, key: str, expected_value: str, desired_value: str) -> bytes:
        return self._store.compare_set(key, expected_value, desired_value)

    def delete_key(self, key: str) -> bool:
        return self._store.delete_key(key)

    def num_keys(self) -> int:
        return self._store.num_keys()


def local_ranks(world: int, body: Callable[[Rank, dist.Store | None], Any], timeout_seconds: float) -> Any:
    """`body(rank, store)` in `world` ranks on this machine: rank 0 here, the others in fresh processes
    (`body` must pickle by reference: a module-level function or a partial of one). Returns rank 0's
    result. A rank that fails makes rank 0 fail within seconds (a hung one: at the collective timeout);
    the error names the ranks that exited, how, and their last output. No rank outlives the call."""
    if world == 1:
        return body(SINGLE, None)
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=timeout_seconds))
    others = _RankProcesses(world, body, store.port)
    try:
        try:
            result = body(Rank(0, world, world), _WatchedStore(store, others, timeout_seconds))
        except Exception as err:
            # The others follow a failed rank within moments (their collectives fail): report them all.
            others.wait(2.0, every=True)
            if others.failed():
                raise RankFailed(f"trainer {others.names()} failed while rank 0 waited on it: {err}"
                                 f"{others.reports()}") from err
            raise
        ended = others.wait(timeout_seconds, every=True)
        if others.failed() or not ended:
            raise RankFailed(f"trainer {others.names() or 'ranks'} did not finish cleanly after rank 0 did"
                             f"{others.reports()}")
        return result
    finally:
        others.stop()


def launch(world: int, body: Callable[[Rank, dist.Store | None], Any],
           timeout_seconds: float) -> tuple[Rank, Any]:
    """`body(rank, store)` as this process's rank of `world`: in a PyTorchJob replica (`WORLD_SIZE` set
    by the operator) this process is one rank and joins the others; elsewhere the ranks are processes
    on this machine (`local_ranks`) and this one is rank 0. Returns this rank and its result."""
    if world < 1:
        raise ValueError(f"trainers must be >= 1, got {world}")
    joined = from_env()
    if joined is None:
        return Rank(0, world, world), local_ranks(world, body, timeout_seconds)
    if joined.world != world:
        raise ValueError(f"trainers={world} but this PyTorchJob has {joined.world} replicas "
                         "(WORLD_SIZE): the job's replica counts come from the same input")
    return joined, body(joined, None)


def _serve(argv: Sequence[str]) -> None:
    """A local rank process: `argv` is RANK WORLD; standard input holds the import path and the store's
    port, then the body (pickled separately: it unpickles only once the path is set)."""
    rank, world = (int(arg) for arg in argv)
    work = sys.stdin.buffer
    sys.path[:], port = pickle.load(work)
    body = pickle.load(work)
    body(Rank(rank, world, world), dist.TCPStore("127.0.0.1", port, world, is_master=False))


if __name__ == "__main__":
    # `python -m workflows.ranks` runs this file as `__main__`; the body's pickled references import
    # `workflows.ranks` itself, so that module (whose Rank they compare with) serves the rank.
    from workflows.ranks import _serve as serve

    serve(sys.argv[1:])
