"""A `Graph` written as the Parquet tables a Spark job would leave: sparse 64-bit ids, shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph_engine.datasets import Graph


def write_tables(graph: Graph, root: Path, shards: int = 2, seed: int = 0) -> np.ndarray:
    """nodes/ and edges/ under `root` (both directions of every edge); returns the id of each node."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(1 << 40, graph.num_nodes, replace=False)).astype(np.int64) * 7 + 3
    split = np.full(graph.num_nodes, None, dtype=object)
    for name, members in (("train", graph.train_ids), ("val", graph.val_ids), ("test", graph.test_ids)):
        split[members] = name
    src = np.concatenate([graph.edges[:, 0], graph.edges[:, 1]])
    dst = np.concatenate([graph.edges[:, 1], graph.edges[:, 0]])
    (root / "nodes").mkdir(parents=True)
    (root / "edges").mkdir()
    for k, rows in enumerate(np.array_split(rng.permutation(graph.num_nodes), shards)):
        flat = pa.array(graph.features[rows].ravel())
        features = pa.FixedSizeListArray.from_arrays(flat, graph.feature_dim)
        pq.write_table(pa.table({"id": ids[rows], "features": features, "label": graph.labels[rows],
                                 "split": pa.array(list(split[rows]), pa.string())}),
                       root / "nodes" / f"part-{k:05d}.parquet")
    for k, rows in enumerate(np.array_split(np.arange(len(src)), shards)):
        pq.write_table(pa.table({"src": ids[src[rows]], "dst": ids[dst[rows]]}),
                       root / "edges" / f"part-{k:05d}.parquet")
    return ids
