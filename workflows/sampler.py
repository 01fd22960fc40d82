"""Mini-batches sampled through a DeepGNN graph handle, and a producer thread that prefetches them.

The handle is either a `DistributedGraph` (the data service) or an in-process `MemoryGraph`: both
answer `weighted_sample_neighbors` and `node_features` the same way, so the trainer has one code path.
DeepGNN calls its C library through `ctypes.CDLL`, which releases the GIL for the duration of each
call: sampling in a thread overlaps the torch step in the main thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

# The graph store format (docs/design.md): one edge type, float feature 0 = features, 1 = label.
EDGE_TYPE = 0
FEATURES = 0
LABEL = 1


class GraphHandle(Protocol):
    """The part of DeepGNN's `MemoryGraph` / `DistributedGraph` the trainer uses."""

    def weighted_sample_neighbors(
        self, nodes: np.ndarray, edge_types: int, count: int = ..., default_node: int = ...,
        default_weight: float = ..., default_edge_type: int = ..., seed: int | None = ...,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def node_features(self, nodes: np.ndarray, features: np.ndarray,
                      dtype: type[np.generic] | np.dtype[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class Batch:
    """A sampled computation tree for `seeds`, ready for `GraphSage(features, index, masks)`."""

    seeds: np.ndarray             # (B,) node ids
    features: torch.Tensor        # (U, F) float32: the batch's distinct nodes (padding -1 is a zero row)
    index: list[torch.Tensor]     # index[k]: (B * prod(fanouts[:k]),) int64 rows of `features`; hop 0 = seeds
    masks: list[torch.Tensor]     # masks[k]: (rows of hop k, fanouts[k]) bool, False = padding
    labels: torch.Tensor          # (B,) int64

    def pinned(self) -> Batch:
        """The same batch in page-locked memory, so `.to(cuda, non_blocking=True)` copies asynchronously."""
        return Batch(seeds=self.seeds, features=self.features.pin_memory(),
                     index=[i.pin_memory() for i in self.index], masks=[m.pin_memory() for m in self.masks],
                     labels=self.labels.pin_memory())


def sample_batch(graph: GraphHandle, seeds: np.ndarray, fanouts: Sequence[int], feature_dim: int,
                 seed: int) -> Batch:
    """Sample `fanouts[k]` neighbours per node of hop k (with replacement), then fetch features.

    Every edge of the store has weight 1, so weighted sampling is uniform. DeepGNN 0.1.66's
    `uniform_sample_neighbors` through a DistributedGraph is not: within one call a node's
    samples cluster on a few of its neighbours (2000 draws of a 4-neighbour node never returned
    one of them), which cost ~10 points of synthetic test accuracy vs the in-process graph.

    One feature request for the distinct nodes of the whole tree (features and label together):
    3 round trips for a 2-hop batch instead of one per hop and kind.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    layers = [seeds]
    masks = []
    for k, fanout in enumerate(fanouts):
        frontier = layers[-1]
        if fanout == 0:
            neighbours = np.empty((len(frontier), 0), dtype=np.int64)
        else:
            # Padding rows (-1) ask for the neighbours of a missing node and get -1 back.
            neighbours, _, _ = graph.weighted_sample_neighbors(
                frontier, EDGE_TYPE, count=fanout, default_node=-1, seed=seed * 1000003 + k)
        masks.append(torch.from_numpy(neighbours >= 0))
        layers.append(neighbours.reshape(-1))
    distinct, where = np.unique(np.concatenate(layers), return_inverse=True)
    # Node -1 (padding) comes back as zeros; the masks keep it out of every mean.
    values = graph.node_features(distinct, np.array([[FEATURES, feature_dim], [LABEL, 1]]), np.float32)
    bounds = np.cumsum([0] + [len(layer) for layer in layers])
    index = [torch.from_numpy(where[a:b].astype(np.int64))
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    labels = torch.from_numpy(values[where[: len(seeds)], feature_dim].astype(np.int64))
    features = torch.from_numpy(np.ascontiguousarray(values[:, :feature_dim]))
    return Batch(seeds=seeds, features=features, index=index, masks=masks, labels=labels)


def batches_of(ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [ids[i: i + batch_size] for i in range(0, len(ids), batch_size)]


T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Runs `make(i)` for i in 0..count-1 in a producer thread, at most `depth` ahead of the consumer.

    Errors in the producer are raised in the consumer at the item where they happened. Leaving the
    `with` block early stops the producer and joins it: no thread outlives its loop. `depth=0`
    makes each item in the consumer's thread when it is asked for (no overlap; the benchmark's
    reference point).
    """

    def __init__(self, make: Callable[[int], T], count: int, depth: int = 2) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._depth = depth
        self._make = make
        self._count = count
        self._queue: queue.Queue[tuple[bool, T | BaseException]] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)

    def __enter__(self) -> Iterator[T]:
        if self._depth == 0:
            return (self._make(i) for i in range(self._count))
        self._thread.start()
        return self._consume()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _produce(self) -> None:
        for i in range(self._count):
            try:
                item: tuple[bool, T | BaseException] = (True, self._make(i))
            except BaseException as err:  # handed to the consumer, which re-raises it
                item = (False, err)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or not item[0]:
                return

    def _consume(self) -> Iterator[T]:
        for _ in range(self._count):
            ok, value = self._queue.get()
            if not ok:
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
