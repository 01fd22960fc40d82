"""DeepGNN's binary partition format, written from arrays instead of one Python record per node and edge.

Byte for byte what deepgnn-ge 0.1.66's `converter/writers.py` (`BinaryWriter` and its node, edge,
feature and alias writers) writes for the same nodes in the same order, each node's edges sorted by
dst, and the `meta.json` that `MultiWorkersConverter` and its dispatcher assemble from the
partitions (tests/test_binary.py holds both against DeepGNN's own converter). The store's records:
float feature 0 = the node's features, float feature 1 = its label, no edge features, one edge type.

A partition is written from a node stream (any number of node chunks, in order) and its edges,
already sorted; files are hashed as they are written, so the manifest's checksums cost no re-read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from deepgnn.graph_engine.snark.alias import Vose
from deepgnn.graph_engine.snark.meta import BINARY_DATA_VERSION

EDGE_TYPE = 0
# Record layouts of writers.py, little-endian and unpadded ("=QQi", "=QQif", "=qqf", "=qqqqf").
NODE_MAP = np.dtype([("id", "<u8"), ("index", "<u8"), ("type", "<i4")])
EDGE_INDEX = np.dtype([("dst", "<u8"), ("feature", "<u8"), ("type", "<i4"), ("weight", "<f4")])
NODE_ALIAS = np.dtype([("left", "<i8"), ("right", "<i8"), ("prob", "<f4")])
EDGE_ALIAS = np.dtype([("src", "<i8"), ("dst", "<i8"), ("alias_src", "<i8"), ("alias_dst", "<i8"),
                       ("prob", "<f4")])
CHECKSUM = "sha256"


def node_alias_name(node_type: int, partition: int) -> str:
    return f"node_{node_type}_{partition}.alias"


def edge_alias_name(edge_type: int, partition: int) -> str:
    return f"edge_{edge_type}_{partition}.alias"


@dataclass
class FileDigest:
    size: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)


class HashedFiles:
    """Output files of one partition, each hashed and sized as it is written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.open: dict[str, BinaryIO] = {}
        self.digests: dict[str, FileDigest] = {}

    def write(self, name: str, data: np.ndarray | bytes) -> None:
        if name not in self.open:
            self.open[name] = (self.folder / name).open("wb")
            self.digests[name] = FileDigest()
        view = np.ascontiguousarray(data).view(np.uint8).ravel().data if isinstance(data, np.ndarray) \
            else memoryview(data)
        self.open[name].write(view)
        digest = self.digests[name]
        digest.size += len(view)
        digest.sha256.update(view)

    def close(self, partition: int | None = None) -> dict[str, dict[str, Any]]:
        """Close the files; their manifest entries (size, checksum, and the partition they belong to)."""
        for handle in self.open.values():
            handle.close()
        where = {} if partition is None else {"partition": partition}
        return {name: {"size": d.size, CHECKSUM: d.sha256.hexdigest(), **where}
                for name, d in self.digests.items()}


@dataclass(frozen=True)
class NodeChunk:
    """Consecutive nodes of a partition: ids, node types (split), features [n, F] and labels."""

    ids: np.ndarray       # int64, >= 0
    types: np.ndarray     # int32
    features: np.ndarray  # float32 [n, F]
    labels: np.ndarray    # float32 (-1: none)


def _alias_probabilities(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Vose's (alias, prob) for `weights` exactly as DeepGNN computes them, or None when every
    element keeps itself (prob 1): what equal weights give, without Vose's per-element Python loop."""
    normalized = np.multiply(weights, len(weights) / np.sum(weights))
    if not (normalized < 1).any():
        return None
    table = Vose(list(range(len(weights))), weights)  # DeepGNN's own loop: byte-identical by construction
    return table.alias.astype(np.int64), table.prob


def _node_alias(ids: np.ndarray) -> np.ndarray:
    """NodeAliasWriter's table: every node weighs 1.0."""
    alias = np.zeros(len(ids), NODE_ALIAS)
    alias["left"] = ids
    alias["prob"] = 1.0
    if len(ids):
        vose = _alias_probabilities(np.ones(len(ids), np.float32))
        if vose is not None:
            other, prob = vose
            aliased = prob < 1.0
            alias["prob"] = prob
            alias["right"][aliased] = ids[other[aliased]]
    return alias


def _edge_alias(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """EdgeAliasWriter's table over the partition's edges in order."""
    alias = np.zeros(len(src), EDGE_ALIAS)
    alias["src"] = src
    alias["dst"] = dst
    alias["prob"] = 1.0
    vose = _alias_probabilities(weights)
    if vose is not None:
        other, prob = vose
        aliased = prob < 1.0
        alias["prob"] = prob
        alias["alias_src"][aliased] = src[other[aliased]]
        alias["alias_dst"][aliased] = dst[other[aliased]]
    return alias


def write_partition(folder: Path, partition: int, nodes: Iterable[NodeChunk], num_nodes: int,
                    edge_src_index: np.ndarray, edge_dst: np.ndarray, edge_weight: np.ndarray
                    ) -> dict[str, Any]:
    """Write partition `partition` into `folder`; return DeepGNN's worker report plus the files' digests.

    `nodes` yields the partition's `num_nodes` nodes in order; an edge is given by the position of
    its source in that order (`edge_src_index`, sorted; each node's edges sorted by dst), its dst id
    and its weight.
    """
    if num_nodes < 1:
        raise ValueError(f"partition {partition} has no nodes")
    files = HashedFiles(folder)
    p = partition
    per_node = 2  # float feature 0 (features) and 1 (label)
    edges = len(edge_dst)
    degree = np.bincount(edge_src_index, minlength=num_nodes)
    # Where each node's edges start in the edge index, then the total: the neighbours index.
    edge_starts = np.concatenate([[0], np.cumsum(degree)]).astype(np.uint64)
    del degree
    ids = np.empty(num_nodes, np.int64)
    types = np.empty(num_nodes, np.int32)
    count = 0
    data_pos = 0
    for chunk in nodes:
        n = len(chunk.ids)
        if count + n > num_nodes:
            raise ValueError(f"partition {p}: more than the {num_nodes} nodes announced")
        index = np.arange(count, count + n, dtype=np.uint64)
        node_map = np.empty(n, NODE_MAP)
        node_map["id"] = chunk.ids
        node_map["index"] = index
        node_map["type"] = chunk.types
        files.write(f"node_{p}_0.map", node_map)
        files.write(f"node_{p}_0.index", index * np.uint64(per_node))
        width = chunk.features.shape[1] * 4
        starts = np.uint64(data_pos) + np.arange(n, dtype=np.uint64) * np.uint64(width + 4)
        files.write(f"node_features_{p}_0.index", np.stack([starts, starts + np.uint64(width)], axis=1))
        rows = np.empty((n, chunk.features.shape[1] + 1), np.float32)
        rows[:, :-1] = chunk.features
        rows[:, -1] = chunk.labels
        files.write(f"node_features_{p}_0.data", rows)
        del rows, node_map, starts, index
        data_pos += n * (width + 4)
        ids[count:count + n] = chunk.ids
        types[count:count + n] = chunk.types
        count += n
    if count != num_nodes:
        raise ValueError(f"partition {p}: {count} nodes written, {num_nodes} announced")
    files.write(f"node_{p}_0.index", np.array([count * per_node], np.uint64))
    files.write(f"node_features_{p}_0.index", np.array([data_pos], np.uint64))
    files.write(f"neighbors_{p}_0.index", edge_starts)
    del edge_starts
    edge_index = np.zeros(edges + 1, EDGE_INDEX)
    edge_index["dst"][:edges] = edge_dst
    edge_index["type"][:edges] = EDGE_TYPE
    edge_index["weight"][:edges] = edge_weight
    edge_index["weight"][edges] = -1  # the writer's closing sentinel (0, 0, 0, -1)
    files.write(f"edge_{p}_0.index", edge_index)
    del edge_index
    files.write(f"edge_features_{p}_0.index", np.zeros(1, np.uint64))
    files.write(f"edge_features_{p}_0.data", b"")

    node_type_num = int(types.max()) + 1
    node_weight: list[float | int] = []
    node_type_count: list[int] = []
    for t in range(node_type_num):
        of_type = ids[types == t]
        files.write(node_alias_name(t, p), _node_alias(of_type))
        node_type_count.append(len(of_type))
        # The writer starts each type's weight at int 0 and adds float 1.0 per node.
        node_weight.append(float(len(of_type)) if len(of_type) else 0)
    del types
    edge_weight_total: list[float | int] = []
    if edges:
        weights = np.ascontiguousarray(edge_weight, np.float32)
        src = ids[edge_src_index]
        files.write(edge_alias_name(EDGE_TYPE, p), _edge_alias(src, edge_dst, weights))
        del src
        # The writer adds each float32 weight to a Python float, in order: a sequential float64 sum.
        edge_weight_total.append(float(np.cumsum(weights, dtype=np.float64)[-1]))
    return {"node_count": count, "edge_count": edges, "node_type_count": node_type_num,
            "edge_type_count": 1 if edges else 0, "node_feature_count": per_node,
            "edge_feature_count": 0,
            "partition": {"id": p, "node_weight": node_weight, "node_type_count": node_type_count,
                          "edge_weight": edge_weight_total, "edge_type_count": [edges] if edges else []},
            "files": files.close(p)}


def pad_alias_files(folder: Path, reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The empty alias files DeepGNN's dispatcher adds for types a partition lacks; returns their digests."""
    node_types = max(r["node_type_count"] for r in reports)
    edge_types = max(r["edge_type_count"] for r in reports)
    empty = {"size": 0, CHECKSUM: hashlib.sha256(b"").hexdigest()}
    added = {}
    for r in reports:
        p = r["partition"]["id"]
        names = [node_alias_name(t, p) for t in range(r["node_type_count"], node_types)]
        names += [edge_alias_name(t, p) for t in range(r["edge_type_count"], edge_types)]
        for name in names:
            (folder / name).write_bytes(b"")
            added[name] = {**empty, "partition": p}
    return added


def meta_json(reports: list[dict[str, Any]]) -> str:
    """DeepGNN's `meta.json` text for these partition reports, as `MultiWorkersConverter` writes it."""
    node_types = max(r["node_type_count"] for r in reports)
    edge_types = max(r["edge_type_count"] for r in reports)
    meta: dict[str, Any] = {
        "binary_data_version": BINARY_DATA_VERSION,
        "node_count": sum(r["node_count"] for r in reports),
        "edge_count": sum(r["edge_count"] for r in reports),
        "node_type_count": node_types,
        "edge_type_count": edge_types,
        "node_feature_count": max(r["node_feature_count"] for r in reports),
        "edge_feature_count": max(r["edge_feature_count"] for r in reports),
    }
    node_per_type = [0] * node_types
    edge_per_type = [0] * edge_types
    meta["partitions"] = {}
    for r in sorted(reports, key=lambda r: r["partition"]["id"]):
        part = r["partition"]
        # The dispatcher pads a partition's per-type lists with int 0 up to the graph's type count.
        node_counts = part["node_type_count"] + [0] * (node_types - len(part["node_type_count"]))
        edge_counts = part["edge_type_count"] + [0] * (edge_types - len(part["edge_type_count"]))
        node_per_type = [a + b for a, b in zip(node_per_type, node_counts, strict=True)]
        edge_per_type = [a + b for a, b in zip(edge_per_type, edge_counts, strict=True)]
        meta["partitions"][f"{part['id']}"] = {
            "node_weight": part["node_weight"] + [0] * (node_types - len(part["node_weight"])),
            "edge_weight": part["edge_weight"] + [0] * (edge_types - len(part["edge_weight"])),
        }
    meta["node_count_per_type"] = node_per_type
    meta["edge_count_per_type"] = edge_per_type
    meta["watermark"] = -1
    return json.dumps(meta)
