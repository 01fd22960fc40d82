"""Data-parallel trainer ranks: who this process is, its shard of the seeds, and the collectives.

Ranks come from one of two places:
- a PyTorchJob (`GRAPHFLEET_TRAINER=pytorchjob`): the training operator gives every pod
  `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE` and `RANK` (the master is rank 0); `from_env` joins;
- locally: `local_ranks` runs rank 0 in this process and ranks 1..N-1 as spawned processes on this
  machine, joined through a TCP store on loopback that rank 0 opens on a free port.

Every collective is bounded by `timeout` (the process group's): a rank that dies or hangs makes the
others raise instead of waiting forever, so the run fails and the fleet is still released.
gloo on CPU, nccl when the trainer runs on CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import distributed_c10d

log = logging.getLogger("workflows.ranks")

# What the Kubeflow training operator sets in every PyTorchJob replica (torch's env:// rendezvous).
ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


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
    """A trainer rank exited with an error or was killed; the message names it."""


def _child(body: Callable[[Rank, dist.Store | None], Any], rank: Rank, port: int) -> None:
    store = dist.TCPStore("127.0.0.1", port, rank.world, is_master=False)
    try:
        body(rank, store)
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None


def local_ranks(world: int, body: Callable[[Rank, dist.Store | None], Any], timeout_seconds: float) -> Any:
    """`body(rank, store)` in `world` ranks on this machine: rank 0 here, the others in spawned
    processes. Returns rank 0's result. A rank that fails makes rank 0 fail (its collectives raise
    or time out); the error names the ranks that exited, and no rank process outlives the call."""
    if world == 1:
        return body(SINGLE, None)
    import multiprocessing

    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=timeout_seconds))
    spawn = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = [
        spawn.Process(target=_child, args=(body, Rank(r, world, world), store.port), name=f"trainer-rank-{r}",
                      daemon=True) for r in range(1, world)]
    for child in children:
        child.start()
    try:
        try:
            result = body(Rank(0, world, world), store)
        except Exception as err:
            dead = _exited(children, grace=2.0)
            if dead:
                raise RankFailed(f"trainer {dead} failed while rank 0 waited on it: {err}") from err
            raise
        for child in children:
            child.join(timeout_seconds)
        dead = _exited(children, grace=0.0)
        if dead or any(c.is_alive() for c in children):
            raise RankFailed(f"trainer {dead or 'ranks'} did not finish cleanly after rank 0 did")
        return result
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join(10)


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


def _exited(children: Sequence[BaseProcess], grace: float) -> str:
    """Ranks that exited non-zero (after up to `grace` s for them to exit), as 'rank 1 (exit -9), ...'."""
    for child in children:
        child.join(grace)
    failed = [f"rank {i} (exit {c.exitcode})" for i, c in enumerate(children, start=1)
              if c.exitcode not in (None, 0)]
    return ", ".join(failed)
