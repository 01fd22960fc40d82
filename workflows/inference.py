"""Batch inference through the graph data service: every node's embedding and predicted class, as Parquet.

The output is a Parquet dataset (a folder, local or s3://) of `part-<rank>.parquet` files with
columns `node_id` (int64), `embedding` (list of float32: the node's last hidden layer) and
`predicted` (int64, the arg-max class). Ranks split the batches as training ranks do.

Batches are the test nodes, in exactly the batches and with the sampling seeds of the test accuracy
(`train.evaluate`), split between ranks by batch; then every other node, partition by partition (rank
r takes partitions r, r + ranks, ...; node ids come from the partitions' node maps, so sparse ids of
graphs converted from tables work, and no rank lists the whole graph), each partition's batches with
seeds of their own. So the predictions' accuracy on the test nodes equals the report's test accuracy,
and the predictions do not depend on the number of ranks.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from graph_engine import store
from graph_engine.binary import NODE_MAP
from workflows import ranks
from workflows.graph_client import open_graph
from workflows.ranks import Rank
from workflows.sampler import batches_of
from workflows.train import (
    EVAL_BATCH,
    TEST_SEED,
    GraphInfo,
    Sampling,
    Trained,
    load,
    resolve_device,
    seeded,
)

SCHEMA = pa.schema([("node_id", pa.int64()), ("embedding", pa.list_(pa.float32())),
                    ("predicted", pa.int64())])


@dataclass(frozen=True)
class Inference:
    """Where the predictions went and how fast they came."""

    uri: str
    nodes: int
    seconds: float

    @property
    def nodes_per_second(self) -> float:
        return self.nodes / self.seconds if self.seconds else 0.0


def partition_node_ids(uri: str, manifest: dict[str, Any], partition: int) -> np.ndarray:
    """The node ids stored in one partition of the graph at `uri` (its DeepGNN node map files, as its
    manifest lists them)."""
    fs, root = store.filesystem(uri)
    parts = sorted(name for name in store.partition_files(manifest, [partition])
                   if name.startswith(f"node_{partition}_") and name.endswith(".map"))
    if not parts:
        raise FileNotFoundError(f"{uri}: its manifest lists no node map of partition {partition} "
                                f"(node_{partition}_*.map)")
    ids = []
    for part in parts:
        with fs.open(f"{root.rstrip('/')}/{part}", "rb") as f:
            ids.append(np.frombuffer(f.read(), NODE_MAP)["id"].astype(np.int64))
    return np.concatenate(ids)


def rank_batches(info: GraphInfo, rank: Rank) -> list[tuple[np.ndarray, int]]:
    """(nodes, sampling seed) of this rank's batches: every world-th test batch, as the test accuracy
    samples them, then the other nodes of every world-th partition."""
    test = np.asarray(info.test_ids, dtype=np.int64)
    mine = seeded(batches_of(test, EVAL_BATCH), TEST_SEED)[rank.rank::rank.world]
    manifest = store.read_info(info.uri)
    for partition in range(rank.rank, info.partitions, rank.world):
        ids = partition_node_ids(info.uri, manifest, partition)
        rest = ids[~np.isin(ids, test)]
        mine += seeded(batches_of(rest, EVAL_BATCH), TEST_SEED + 1 + partition)
    return mine


def check_compatible(trained: Trained, info: GraphInfo) -> None:
    """A checkpoint fits a graph with the same feature width and class count."""
    want, have = trained.info, info
    if (want.feature_dim, want.num_classes) != (have.feature_dim, have.num_classes):
        raise ValueError(f"the model was trained on {want.dataset} ({want.feature_dim} features, "
                         f"{want.num_classes} classes) and cannot read {have.dataset} ({have.feature_dim} "
                         f"features, {have.num_classes} classes)")


def predict(trained: Trained, sampling: Sampling, info: GraphInfo, rank: Rank = ranks.SINGLE) -> pa.Table:
    """This rank's share of every node's embedding and predicted class."""
    model, config = trained.model, trained.config
    model.eval()
    device = next(model.parameters()).device
    ids, embeddings, predicted = [], [], []
    stream = sampling.stream_seeded(rank_batches(info, rank), config.eval_fanouts, config.prefetch)
    with torch.no_grad(), stream as batches:
        for batch in batches:
            logits, embedding = model.encode(batch.features.to(device, non_blocking=True),
                                             [i.to(device, non_blocking=True) for i in batch.index],
                                             [m.to(device, non_blocking=True) for m in batch.masks])
            ids.append(batch.seeds)
            embeddings.append(embedding.float().cpu().numpy())
            predicted.append(logits.argmax(1).cpu().numpy())
    if not ids:
        return SCHEMA.empty_table()
    flat = np.concatenate(embeddings)
    width = flat.shape[1]
    offsets = np.arange(0, flat.size + 1, width, dtype=np.int32)
    return pa.table([pa.array(np.concatenate(ids)), pa.ListArray.from_arrays(offsets, flat.reshape(-1)),
                     pa.array(np.concatenate(predicted).astype(np.int64))], schema=SCHEMA)


def write_part(table: pa.Table, out_uri: str, rank: Rank) -> str:
    fs, root = store.filesystem(out_uri)
    fs.makedirs(root, exist_ok=True)
    path = f"{root.rstrip('/')}/part-{rank.rank:05d}.parquet"
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return path


def check_target(out_uri: str) -> None:
    """Parts of an earlier run would mix with this one's: the target must hold none."""
    fs, root = store.filesystem(out_uri)
    if fs.exists(root) and fs.glob(f"{root.rstrip('/')}/*.parquet"):
        raise FileExistsError(f"{out_uri} already holds Parquet files: write predictions to a new folder")


def _infer_rank(checkpoint: str, graph_uri: str, endpoints: Sequence[str], out_uri: str, rank: Rank,
                group_store: Any) -> int:
    trained = load(Path(checkpoint))
    info = GraphInfo.read(graph_uri)
    check_compatible(trained, info)
    device = resolve_device(trained.config.device)
    with ranks.process_group(rank, group_store, device, trained.config.collective_seconds):
        sampling = Sampling(open_graph(graph_uri, endpoints, info.partitions), info.feature_dim, endpoints,
                            pin=device.type == "cuda")
        written = predict(trained, sampling, info, rank)
        write_part(written, out_uri, rank)
        return sum(ranks.gather(written.num_rows, rank))  # also waits until every part is written


def infer(checkpoint: Path, graph_uri: str, out_uri: str, endpoints: Sequence[str] = (),
          trainers: int = 1, collective_seconds: float = 300.0) -> Inference:
    """Predict every node of the graph at `graph_uri` with the checkpoint, in `trainers` ranks reading
    the fleet at `endpoints` (none: the graph loaded in each process), into the dataset `out_uri`."""
    check_target(out_uri)
    started = time.perf_counter()
    body = functools.partial(_infer_rank, str(checkpoint), graph_uri, list(endpoints), out_uri)
    _, nodes = ranks.launch(trainers, body, collective_seconds)
    return Inference(uri=out_uri, nodes=nodes, seconds=time.perf_counter() - started)


def read(uri: str) -> pa.Table:
    """The whole predictions dataset, ordered by node id."""
    fs, root = store.filesystem(uri)
    parts = sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))
    tables = []
    for part in parts:
        with fs.open(part, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables).sort_by("node_id") if tables else SCHEMA.empty_table()
