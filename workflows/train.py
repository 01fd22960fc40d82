"""GraphSAGE training through the graph data service (DeepGNN `DistributedGraph`).

    GRAPHFLEET_ENDPOINTS=127.0.0.1:50051,127.0.0.1:50052 \\
        python -m workflows.train --info /path/to/graph --epochs 30 --seed 0 --out runs/cora

The endpoints come only from `GRAPHFLEET_ENDPOINTS` (what the Flyte connector hands a trainer); the
graph's dims and split come from its `graphfleet.json`. The same `fit`/`evaluate` run on an
in-process `MemoryGraph` (the benchmark's baseline): one code path, two graph handles.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from graph_engine import store
from workflows import ranks
from workflows.graph_client import endpoints_from_env, open_graph, open_service
from workflows.model import GraphSage
from workflows.ranks import SINGLE, Rank, shard
from workflows.report import TrainingReport, plot_curves
from workflows.sampler import Batch, GraphHandle, Prefetcher, batches_of, sample_batch

log = logging.getLogger("workflows.train")
DEVICES = ("auto", "cpu", "cuda")
# Evaluation batches: 128 seeds x 40 x 25 sampled positions keep the gathered hidden rows ~65 MB.
EVAL_BATCH = 128


@dataclass(frozen=True)
class GraphInfo:
    """What a trainer needs besides the endpoints: the graph's manifest (`graphfleet.json`); the split
    ids are read from their files beside it on first use (store.read_split), not held in the manifest."""

    dataset: str
    num_nodes: int
    feature_dim: int
    num_classes: int
    partitions: int
    uri: str
    split_counts: dict[str, int]

    @classmethod
    def read(cls, uri: str) -> GraphInfo:
        """From `graphfleet.json` itself or the graph dir/URI that holds it."""
        uri = uri.rstrip("/").removesuffix("/" + store.INFO)
        raw = store.read_info(uri)
        missing = [f for f in ("dataset", "num_nodes", "feature_dim", "num_classes", "partitions", "splits")
                   if f not in raw]
        if missing:
            raise ValueError(f"{uri}/{store.INFO} lacks {', '.join(missing)}: reconvert the graph with "
                             "graph_engine.convert")
        counts = {name: int(split["count"]) for name, split in raw["splits"].items()}
        info = cls(raw["dataset"], raw["num_nodes"], raw["feature_dim"], raw["num_classes"],
                   raw["partitions"], uri, counts)
        if not counts.get("train") or not counts.get("val"):
            raise ValueError(f"{uri}/{store.INFO}: the graph has no training or validation nodes "
                             f"({counts.get('train', 0)} train, {counts.get('val', 0)} validation)")
        return info

    @functools.cached_property
    def train_ids(self) -> np.ndarray:
        return store.read_split(self.uri, "train")

    @functools.cached_property
    def val_ids(self) -> np.ndarray:
        return store.read_split(self.uri, "val")

    @functools.cached_property
    def test_ids(self) -> np.ndarray:
        return store.read_split(self.uri, "test")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the ones tuned on Cora (docs/benchmarks.md, "Training")."""

    epochs: int = 20
    seed: int = 0
    hidden: int = 128
    dropout: float = 0.5
    lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    fanouts: tuple[int, ...] = (25, 10)        # GraphSAGE's own; tuned on Cora
    eval_fanouts: tuple[int, ...] = (25, 10)   # chosen on validation only (bench/eval_fanout_sweep.py)
    prefetch: int = 4                          # batches sampled ahead of the training step; 0: no overlap
    # torch intra-op threads; 0: one fewer than this process's cores (at least 1). On 2 shared cores,
    # 2 threads made a step 2-7x slower whenever the sampler or a server took a core (docs/benchmarks.md).
    torch_threads: int = 0
    # Where the model and its batches live (sampling stays on the CPU); auto: CUDA when present.
    device: str = "auto"
    # Longest wait in a collective between trainer ranks: a rank that dies or hangs fails the run then.
    collective_seconds: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.collective_seconds <= 0:
            problems.append(f"collective_seconds must be > 0, got {self.collective_seconds}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prefetch < 0:
            problems.append(f"prefetch must be >= 0 batches, got {self.prefetch}")
        if self.torch_threads < 0:
            problems.append(f"torch_threads must be >= 0 (0: cores - 1), got {self.torch_threads}")
        if self.hidden < 1:
            problems.append(f"hidden must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.fanouts or any(f < 0 for f in self.fanouts):
            problems.append(f"fanouts must be one count >= 0 per layer, got {list(self.fanouts)}")
        if len(self.eval_fanouts) != len(self.fanouts) or any(f < 0 for f in self.eval_fanouts):
            problems.append(f"eval_fanouts must have one count >= 0 per layer ({len(self.fanouts)}), "
                            f"got {list(self.eval_fanouts)}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Trained:
    """A fitted model and what fitting measured; `report` lacks only the test accuracy."""

    model: GraphSage
    config: TrainConfig
    report: TrainingReport
    info: GraphInfo = field(repr=False)


def usable_cores() -> int:
    """The cores this process may run on (its cpuset, in a container); macOS has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(name: str, cuda_available: bool | None = None) -> torch.device:
    """`auto`: the first GPU when torch sees one, else the CPU. Asking for CUDA without one is an error
    (silently training on the CPU would hide a broken GPU node for hours)."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if name.startswith("cuda") and not available:
        raise ValueError(f"device {name!r}: torch sees no CUDA device here (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda}); use device='auto' or 'cpu'")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(config: TrainConfig, rank: Rank = SINGLE) -> Iterator[int]:
    """torch's intra-op threads set for a fit or evaluation, and restored after: the setting is
    process-wide and the caller's other work should not inherit it. Ranks on one machine share it."""
    count = config.torch_threads or max(1, (usable_cores() - 1) // rank.colocated)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def build_model(info: GraphInfo, config: TrainConfig) -> GraphSage:
    return GraphSage(info.feature_dim, config.hidden, info.num_classes, len(config.fanouts), config.dropout)


class Sampling:
    """Samples batches through a graph handle; through a data service, rides out server outages.

    The DeepGNN client retries an outage of ~16 s by itself and then raises. A killed server is
    restarted by its provisioner (a pod by Kubernetes, a process by the local provisioner); until
    it serves again a batch fails. We then wait for every endpoint's gRPC health and sample that
    batch again, at most `attempts` times, each wait bounded by `outage_seconds`.
    """

    def __init__(self, graph: GraphHandle, feature_dim: int, endpoints: Sequence[str] = (),
                 attempts: int = 3, outage_seconds: float = 120.0, pin: bool = False) -> None:
        self.graph = graph
        self.pin = pin  # page-locked batches: the copy to a GPU can then overlap the step
        self.feature_dim = feature_dim
        self.endpoints = list(endpoints)
        self.attempts = attempts
        self.outage_seconds = outage_seconds
        self.retried = 0

    def batch(self, seeds: np.ndarray, fanouts: Sequence[int], seed: int) -> Batch:
        for attempt in range(1, self.attempts + 1):
            try:
                batch = sample_batch(self.graph, seeds, fanouts, self.feature_dim, seed)
                return batch.pinned() if self.pin else batch
            except Exception as err:  # the native client raises bare Exception("Failed to ...")
                if not self.endpoints or attempt == self.attempts:
                    raise
                log.warning("sampling failed (%s); waiting up to %.0fs for %s to serve again",
                            err, self.outage_seconds, ", ".join(self.endpoints))
                from graph_engine.health import wait_ready

                wait_ready(self.endpoints, self.outage_seconds)
                self.retried += 1
        raise AssertionError("unreachable")

    def stream(self, ids: np.ndarray, batch_size: int, fanouts: Sequence[int], seed: int,
               depth: int, rank: Rank = SINGLE) -> Prefetcher[Batch]:
        return self.stream_chunks(batches_of(ids, batch_size), fanouts, seed, depth, rank)

    def stream_chunks(self, chunks: Sequence[np.ndarray], fanouts: Sequence[int], seed: int, depth: int,
                      rank: Rank = SINGLE) -> Prefetcher[Batch]:
        """`seeded(chunks, seed)`; `rank` takes every world-th batch. A batch's nodes and seed do not
        depend on the number of ranks: neither do its samples."""
        return self.stream_seeded(seeded(chunks, seed)[rank.rank::rank.world], fanouts, depth)

    def stream_seeded(self, batches: Sequence[tuple[np.ndarray, int]], fanouts: Sequence[int],
                      depth: int) -> Prefetcher[Batch]:
        """Each (nodes, sampling seed) sampled as one batch, in order."""
        return Prefetcher(lambda j: self.batch(batches[j][0], fanouts, batches[j][1]), len(batches), depth)


def seeded(chunks: Sequence[np.ndarray], seed: int) -> list[tuple[np.ndarray, int]]:
    """(nodes, sampling seed) of each batch: batch i samples `chunks[i]` with seed `seed * 7919 + i`.
    Inference replays the test accuracy's batches through it (workflows/inference.py)."""
    return [(chunk, seed * 7919 + i) for i, chunk in enumerate(chunks)]


def logits(model: GraphSage, batch: Batch) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(batch.features.to(device, non_blocking=True),
                 [i.to(device, non_blocking=True) for i in batch.index],
                 [m.to(device, non_blocking=True) for m in batch.masks])


def correct(model: GraphSage, batches: Iterator[Batch]) -> int:
    """How many seeds of `batches` the model classifies right."""
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    with torch.no_grad():
        for batch in batches:
            labels = batch.labels.to(device, non_blocking=True)
            hits += int((logits(model, batch).argmax(1) == labels).sum())
    return hits


def accuracy(model: GraphSage, sampling: Sampling, ids: Sequence[int] | np.ndarray, config: TrainConfig,
             seed: int, rank: Rank = SINGLE) -> float:
    """Share of `ids` whose predicted class equals the label, with `config.eval_fanouts` samples in
    batches of EVAL_BATCH. With several ranks each classifies every world-th batch and the counts are
    summed: every rank gets the same value, and the same as one rank would."""
    nodes = np.asarray(ids, dtype=np.int64)
    if len(nodes) == 0:
        raise ValueError("accuracy of an empty node set: the graph's split has no such nodes")
    with sampling.stream(nodes, EVAL_BATCH, config.eval_fanouts, seed, config.prefetch, rank) as batches:
        hits, = ranks.total([correct(model, batches)], rank)
    return hits / len(nodes)


def rank_seed(seed: int, rank: Rank) -> int:
    """Ranks sample with different seeds; rank 0 with `seed` itself (one trainer as before)."""
    return seed + rank.rank * 1_000_003


def fit(graph: GraphHandle, info: GraphInfo, config: TrainConfig, endpoints: Sequence[str] = (),
        progress: bool = True, rank: Rank = SINGLE) -> Trained:
    """Train on `info.train_ids`, keep the epoch with the best validation accuracy.

    With several ranks (inside `ranks.process_group`) every rank trains on its shard of each epoch's
    permutation of the training ids, gradients are averaged over ranks at every step, and validation
    is counted over the ranks' shards and summed: all ranks hold the same model and keep the same epoch.
    """
    device = resolve_device(config.device)
    with torch_threads(config, rank):
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        sampling = Sampling(graph, info.feature_dim, endpoints, pin=device.type == "cuda")
        model = build_model(info, config).to(device)
        ranks.broadcast_model(model, rank)
        if rank.rank:
            torch.manual_seed(rank_seed(config.seed, rank))  # dropout masks differ between ranks
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        train_ids = np.asarray(info.train_ids, dtype=np.int64)
        per_rank = len(shard(train_ids, rank, pad=True))
        n_batches = -(-per_rank // config.batch_size)
        report = TrainingReport(dataset=info.dataset, seed=config.seed, epochs=config.epochs,
                                endpoints=list(endpoints), trainers=rank.world)
        best_state: dict[str, torch.Tensor] = {}
        best_val = -1.0
        seconds = 0.0
        for epoch in range(1, config.epochs + 1):
            mine = shard(rng.permutation(train_ids), rank, pad=True)
            model.train()
            loss_sum = 0.0
            started = time.perf_counter()
            bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{config.epochs}",
                       disable=not progress or not rank.main, file=sys.stderr)
            seed = rank_seed(config.seed * 100003 + epoch, rank)
            with sampling.stream(mine, config.batch_size, config.fanouts, seed, config.prefetch) as batches:
                for batch in batches:
                    optimizer.zero_grad()
                    loss = loss_fn(logits(model, batch), batch.labels.to(device, non_blocking=True))
                    loss.backward()
                    ranks.average_gradients(model, rank)
                    optimizer.step()
                    loss_sum += loss.item() * len(batch.seeds)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            seconds += time.perf_counter() - started
            loss_sum, = ranks.total([loss_sum], rank)
            val = accuracy(model, sampling, info.val_ids, config, seed=-epoch, rank=rank)
            report.train_loss.append(loss_sum / (per_rank * rank.world))
            report.val_curve.append(val)
            bar.set_postfix(loss=f"{report.train_loss[-1]:.3f}", val_acc=f"{val:.3f}")
            bar.close()
            if val > best_val:
                best_val, report.best_epoch = val, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        ranks.check_same_model(model, rank)
        report.val_accuracy = best_val
        # The slowest rank's time: the step waits for it at every all-reduce.
        report.train_seconds, = ranks.total([seconds], rank, op="max")
        report.rank_samples = ranks.gather(per_rank * config.epochs, rank)
        report.samples_per_second = sum(report.rank_samples) / report.train_seconds
        report.retried_batches = int(ranks.total([sampling.retried], rank)[0])
        return Trained(model=model, config=config, report=report, info=info)


def _fit_rank(uri: str, config: TrainConfig, endpoints: Sequence[str], progress: bool, rank: Rank,
              store: Any) -> Trained:
    """One rank: its own graph client (clients cannot be shared between processes), then `fit`."""
    info = GraphInfo.read(uri)
    with ranks.process_group(rank, store, resolve_device(config.device), config.collective_seconds):
        return fit(open_graph(uri, endpoints, info.partitions), info, config, endpoints,
                   progress and rank.main, rank)


def fit_ranks(uri: str, config: TrainConfig, endpoints: Sequence[str] = (), trainers: int = 1,
              progress: bool = True) -> tuple[Rank, Trained]:
    """`fit` in `trainers` data-parallel ranks on the graph at `uri`, all reading the same fleet
    (`ranks.launch`: PyTorchJob replicas, or local processes). Returns this process's rank and its
    model (the same on every rank)."""
    body = functools.partial(_fit_rank, uri, config, list(endpoints), progress)
    return ranks.launch(trainers, body, config.collective_seconds)  # type: ignore[no-any-return]


# The sampling seed of the test accuracy; inference over the test nodes uses it too (same batches,
# same samples, the same predictions).
TEST_SEED = 1 << 20


def evaluate(trained: Trained, graph: GraphHandle, endpoints: Sequence[str] = ()) -> TrainingReport:
    """The fitting report with the test accuracy of the kept model filled in."""
    sampling = Sampling(graph, trained.info.feature_dim, endpoints)
    with torch_threads(trained.config):
        test = accuracy(trained.model, sampling, trained.info.test_ids, trained.config, seed=TEST_SEED)
    report = TrainingReport(**{**asdict(trained.report), "test_accuracy": test})
    report.retried_batches += sampling.retried
    return report


def save(trained: Trained, path: Path) -> Path:
    """A checkpoint another process (the evaluation task) can `load` without the training code state."""
    state = {k: v.cpu() for k, v in trained.model.state_dict().items()}
    torch.save({"state": state, "config": asdict(trained.config),
                "report": asdict(trained.report), "info": asdict(trained.info)}, path)
    return path


def load(path: Path) -> Trained:
    saved: dict[str, Any] = torch.load(path, weights_only=True)
    cfg = saved["config"]
    config = TrainConfig(**{**cfg, "fanouts": tuple(cfg["fanouts"]),
                            "eval_fanouts": tuple(cfg["eval_fanouts"])})
    info = GraphInfo(**saved["info"])
    model = build_model(info, config)
    model.load_state_dict(saved["state"])
    model.to(resolve_device(config.device))
    return Trained(model=model, config=config, report=TrainingReport(**saved["report"]), info=info)


def run(info: GraphInfo, config: TrainConfig, endpoints: Sequence[str], out: Path | None,
        progress: bool = True) -> TrainingReport:
    """Fit and test through the service at `endpoints`; write report.json and curves.png to `out`."""
    print(f"graph data service: {', '.join(endpoints)}", file=sys.stderr)
    graph = open_service(endpoints)
    trained = fit(graph, info, config, endpoints, progress)
    report = evaluate(trained, graph, endpoints)
    if out is not None:
        write_outputs(report, out)
    return report


CURVES_FILE = "curves.png"


def write_outputs(report: TrainingReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    plot_curves(report, out / CURVES_FILE)


def _fanouts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 10,10, got {text!r}") from None


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m workflows.train", description=__doc__.splitlines()[0])
    parser.add_argument("--info", required=True, help="graphfleet.json, or the graph dir/URI that holds it")
    parser.add_argument("--out", type=Path, default=None, help="directory for report.json and curves.png")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--fanouts", type=_fanouts, default=defaults.fanouts)
    parser.add_argument("--eval-fanouts", type=_fanouts, default=defaults.eval_fanouts)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    ns = parser.parse_args(argv)
    try:
        config = TrainConfig(epochs=ns.epochs, seed=ns.seed, hidden=ns.hidden, dropout=ns.dropout, lr=ns.lr,
                             weight_decay=ns.weight_decay, batch_size=ns.batch_size, fanouts=ns.fanouts,
                             eval_fanouts=ns.eval_fanouts)
    except ValueError as err:
        parser.error(str(err))
    return ns, config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    ns, config = parse_args(argv)
    try:
        endpoints = endpoints_from_env()
        info = GraphInfo.read(ns.info)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = run(info, config, endpoints, ns.out, progress=not ns.no_progress)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
