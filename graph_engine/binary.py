"""DeepGNN's binary partition format, written from arrays instead of one Python record per node and edge.

Byte for byte what deepgnn-ge 0.1.66's `converter/writers.py` (`BinaryWriter` and its node, edge,
feature and alias writers) writes for the same nodes in the same order, each node's edges sorted by
dst, and the `meta.json` that `MultiWorkersConverter` and its dispatcher assemble from the
partitions (tests/test_convert_tables.py holds both against DeepGNN's own converter, tests/test_binary.py the
alias tables against its `Vose`). The store's records:
float feature 0 = the node's features, float feature 1 = its label, no edge features, one edge type.

A partition is written from consecutive slices of its nodes (each a stream of node chunks) and their
edges, already sorted; files are hashed as they are written, so the manifest's checksums cost no re-read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
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


# Steps of Vose's loop replayed per numpy pass: grown while the float64 forecast of the stacks' merge
# holds, shrunk after it misses; below _SCALAR_STEPS a plain loop is cheaper than numpy's per-call cost.
_MIN_WINDOW, _MAX_WINDOW, _SCALAR_STEPS = 1 << 10, 1 << 20, 256


def vose_alias(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Vose's (alias, prob) for `weights` exactly as DeepGNN's `alias.Vose` computes them, or None when
    every element keeps itself (prob 1), as equal weights give.

    Vose pops a small (normalized weight < 1) and a large, aliases the small to the large and sets the
    large's weight to float32 `(large + small) - 1`; the large goes back on top of its stack, or, below
    1, on top of the small stack, so the next pop takes it again. That is one float32 running value r
    that takes the next small while r >= 1 and the next large otherwise: for a guessed order of takes,
    r = (r + u) - 1 is one sequential float32 `cumsum` of r, u1, -1, u2, -1, ... (subtracting 1 from a
    the same two float32 operations Vose does). The order is guessed from float64 sums, checked
    against the float32 values, and kept up to its first miss.
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # all weights 0: NaN, every element keeps itself
        w = np.multiply(weights, len(weights) / np.sum(weights))
    if not (w < 1).any():
        return None
    return _vose(w)


def _vose(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.int32 if len(w) < 1 << 31 else np.int64  # half the memory of a partition's edges
    is_small = w < 1
    smalls = np.flatnonzero(is_small)[::-1].astype(index)  # Vose's two stacks, in the order it pops them
    larges = np.flatnonzero(~is_small)[::-1].astype(index)
    del is_small
    alias = np.zeros(len(w), index)
    prob = np.ones(len(w), np.float32)  # what Vose gives the elements left on either stack
    if not len(larges):
        return alias, prob
    ws, wl = w[smalls], w[larges]
    i, j, cur, r = 0, 1, int(larges[0]), w[larges[0]]  # next small, next large, the large held, its r
    window = _MIN_WINDOW
    while (j < len(larges)) if r < 1 else (i < len(smalls)):
        if window < _SCALAR_STEPS:  # the forecast keeps missing (weights within float32 rounding of 1)
            for _ in range(_SCALAR_STEPS):
                if r < 1 and j < len(larges):
                    alias[cur], prob[cur] = larges[j], r
                    r = (wl[j] + r) - 1
                    cur, j = int(larges[j]), j + 1
                elif not r < 1 and i < len(smalls):
                    alias[smalls[i]], prob[smalls[i]] = cur, ws[i]
                    r = (r + ws[i]) - 1
                    i += 1
                else:
                    break
            window = _MIN_WINDOW
            continue
        # Forecast which takes are larges: the next large comes once the smalls' deficit passes r - 1
        # plus the surplus of the larges taken so far.
        s_ws, s_wl = ws[i:i + window], wl[j:j + window]
        deficit = np.concatenate([[0.0], np.cumsum(1.0 - s_ws.astype(np.float64))])
        surplus = np.concatenate([[0.0], np.cumsum(s_wl.astype(np.float64) - 1.0)])
        smalls_before = np.searchsorted(deficit, float(r) + surplus - 1.0, side="right")
        nl = int(np.count_nonzero(smalls_before[:-1] <= len(s_ws)))
        steps = nl + min(int(smalls_before[nl]), len(s_ws))
        is_large = np.zeros(steps, bool)
        is_large[smalls_before[:nl] + np.arange(nl)] = True
        u = np.empty(steps, np.float32)
        u[is_large] = s_wl[:nl]
        u[~is_large] = s_ws[:steps - nl]
        seq = np.empty(2 * steps + 1, np.float32)
        seq[0], seq[1::2], seq[2::2] = r, u, -1
        acc = np.cumsum(seq, dtype=np.float32)  # sequential, in float32
        r_before = acc[0:-1:2]
        missed = np.flatnonzero((r_before < 1) != is_large)
        k = int(missed[0]) if len(missed) else steps  # the takes before the first miss are Vose's
        is_large, u, r_before = is_large[:k], u[:k], r_before[:k]
        nl = int(np.count_nonzero(is_large))
        elem = np.empty(k, np.int64)
        elem[is_large] = larges[j:j + nl]
        elem[~is_large] = smalls[i:i + k - nl]
        # The large held before each take: the last large taken before it.
        last_large = np.maximum.accumulate(np.where(is_large, np.arange(k), -1))
        held = np.concatenate([[cur], elem])[np.concatenate([[-1], last_large[:-1]]) + 1]
        alias[elem[~is_large]], prob[elem[~is_large]] = held[~is_large], u[~is_large]
        alias[held[is_large]], prob[held[is_large]] = elem[is_large], r_before[is_large]
        r = acc[2 * k]
        if last_large[-1] >= 0:
            cur = int(elem[last_large[-1]])
        i, j = i + k - nl, j + nl
        window = min(2 * window, _MAX_WINDOW) if k == steps else 2 * k
    return alias, prob


# Reading back a partition's own files for its weighted edge alias table, this many edges at a time.
_READ_BACK = 1 << 20


class PartitionWriter:
    """Writes partition `partition` into `folder` from consecutive slices of its nodes (`add`, in node
    order), so memory is one slice, then `close` returns DeepGNN's worker report plus the files' digests.

    The alias tables: every node weighs 1.0, so a node's record keeps itself (checked in `close`), and
    with `equal_weights` so does every edge's, and both stream. Unequal edge weights need Vose over the
    partition's edges at once, as DeepGNN's EdgeAliasWriter does: `close` reads the weights back from
    the edge index and writes the table in slices.
    """

    PER_NODE = 2  # float feature 0 (features) and 1 (label)

    def __init__(self, folder: Path, partition: int, equal_weights: bool) -> None:
        self.files = HashedFiles(folder)
        self.folder, self.p, self.equal_weights = folder, partition, equal_weights
        self.nodes = self.edges = self.data_pos = 0
        self.per_type: list[int] = []
        self.weight_total = 0.0

    def add(self, nodes: Iterable[NodeChunk], num_nodes: int, edge_src_index: np.ndarray,
            edge_dst: np.ndarray, edge_weight: np.ndarray) -> None:
        """The next `num_nodes` nodes (`nodes` yields them in order) and their edges: an edge is given
        by the position of its source among these nodes (`edge_src_index`, sorted; each node's edges
        sorted by dst), its dst id and its weight."""
        files, p = self.files, self.p
        degree = np.bincount(edge_src_index, minlength=num_nodes)
        # Where each node's edges start in the edge index; `close` adds the total.
        files.write(f"neighbors_{p}_0.index", np.uint64(self.edges) + np.concatenate(
            [[0], np.cumsum(degree)])[:-1].astype(np.uint64))
        del degree
        ids = np.empty(num_nodes, np.int64)
        count = 0
        for chunk in nodes:
            n = len(chunk.ids)
            if count + n > num_nodes:
                raise ValueError(f"partition {p}: more than the {num_nodes} nodes announced")
            index = np.arange(self.nodes + count, self.nodes + count + n, dtype=np.uint64)
            node_map = np.empty(n, NODE_MAP)
            node_map["id"] = chunk.ids
            node_map["index"] = index
            node_map["type"] = chunk.types
            files.write(f"node_{p}_0.map", node_map)
            files.write(f"node_{p}_0.index", index * np.uint64(self.PER_NODE))
            width = chunk.features.shape[1] * 4
            starts = np.uint64(self.data_pos) + np.arange(n, dtype=np.uint64) * np.uint64(width + 4)
            files.write(f"node_features_{p}_0.index", np.stack([starts, starts + np.uint64(width)], axis=1))
            rows = np.empty((n, chunk.features.shape[1] + 1), np.float32)
            rows[:, :-1] = chunk.features
            rows[:, -1] = chunk.labels
            files.write(f"node_features_{p}_0.data", rows)
            del rows, node_map, starts, index
            self.data_pos += n * (width + 4)
            for t in range(int(chunk.types.max(initial=-1)) + 1):
                of_type = chunk.ids[chunk.types == t]
                if t == len(self.per_type):
                    self.per_type.append(0)
                self.per_type[t] += len(of_type)
                files.write(node_alias_name(t, p), _kept_alias(of_type))
            ids[count:count + n] = chunk.ids
            count += n
        if count != num_nodes:
            raise ValueError(f"partition {p}: {count} nodes written, {num_nodes} announced")
        self.nodes += count
        edges = len(edge_dst)
        edge_index = np.zeros(edges, EDGE_INDEX)
        edge_index["dst"] = edge_dst
        edge_index["type"] = EDGE_TYPE
        edge_index["weight"] = edge_weight
        files.write(f"edge_{p}_0.index", edge_index)
        del edge_index
        if edges and self.equal_weights:
            files.write(edge_alias_name(EDGE_TYPE, p), _kept_edges(ids[edge_src_index], edge_dst))
        # The writer adds each float32 weight to a Python float, in order: a sequential float64 sum.
        self.weight_total = float(np.cumsum(np.concatenate([[self.weight_total], edge_weight]),
                                            dtype=np.float64)[-1])
        self.edges += edges

    def close(self) -> dict[str, Any]:
        files, p, count, edges = self.files, self.p, self.nodes, self.edges
        if count < 1:
            raise ValueError(f"partition {p} has no nodes")
        files.write(f"node_{p}_0.index", np.array([count * self.PER_NODE], np.uint64))
        files.write(f"node_features_{p}_0.index", np.array([self.data_pos], np.uint64))
        files.write(f"neighbors_{p}_0.index", np.array([edges], np.uint64))
        sentinel = np.zeros(1, EDGE_INDEX)
        sentinel["weight"] = -1  # the writer's closing sentinel (0, 0, 0, -1)
        files.write(f"edge_{p}_0.index", sentinel)
        files.write(f"edge_features_{p}_0.index", np.zeros(1, np.uint64))
        files.write(f"edge_features_{p}_0.data", b"")
        for t, n in enumerate(self.per_type):
            files.write(node_alias_name(t, p), b"")  # a type this partition lacks still gets its file
            if n >= 1 << 24 and vose_alias(np.ones(n, np.float32)) is not None:
                # Past 2**24, float32 no longer sums n ones exactly, and DeepGNN's table would alias nodes.
                raise ValueError(f"partition {p} has {n} nodes of type {t}, more than DeepGNN's float32 "
                                 "node alias table handles exactly; use more partitions")
        if edges and not self.equal_weights:
            self._weighted_edge_alias()
        node_weight: list[float | int] = [float(n) if n else 0 for n in self.per_type]
        return {"node_count": count, "edge_count": edges, "node_type_count": len(self.per_type),
                "edge_type_count": 1 if edges else 0, "node_feature_count": self.PER_NODE,
                "edge_feature_count": 0,
                "partition": {"id": p, "node_weight": node_weight, "node_type_count": list(self.per_type),
                              "edge_weight": [self.weight_total] if edges else [],
                              "edge_type_count": [edges] if edges else []},
                "files": files.close(p)}

    def _weighted_edge_alias(self) -> None:
        """EdgeAliasWriter's table over the partition's edges, from the files written so far. Read in
        pieces, not mapped: a map's pages of the whole edge index would count in the worker's memory."""
        files, p = self.files, self.p
        for name in (f"node_{p}_0.map", f"neighbors_{p}_0.index", f"edge_{p}_0.index"):
            files.open[name].flush()
        node_ids = np.fromfile(self.folder / f"node_{p}_0.map", NODE_MAP)["id"].copy()
        starts = np.fromfile(self.folder / f"neighbors_{p}_0.index", np.uint64)
        weight = np.empty(self.edges, np.float32)
        for a in range(0, self.edges, _READ_BACK):
            weight[a:a + _READ_BACK] = self._edge_index(a)["weight"]
        vose = vose_alias(weight)
        del weight
        dst = np.empty(self.edges, np.int64)
        for a in range(0, self.edges, _READ_BACK):
            dst[a:a + _READ_BACK] = self._edge_index(a)["dst"]

        def ends(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return node_ids[np.searchsorted(starts, edges.astype(np.uint64), side="right") - 1], dst[edges]

        for a in range(0, self.edges, _READ_BACK):
            rows = np.arange(a, min(a + _READ_BACK, self.edges))
            table = _kept_edges(*ends(rows))
            if vose is not None:
                other, prob = vose[0][rows], vose[1][rows]
                table["prob"] = prob
                aliased = prob < 1.0
                table["alias_src"][aliased], table["alias_dst"][aliased] = ends(other[aliased])
            files.write(edge_alias_name(EDGE_TYPE, p), table)

    def _edge_index(self, start: int) -> np.ndarray:
        """Up to `_READ_BACK` records of the edge index from edge `start` on."""
        return np.fromfile(self.folder / f"edge_{self.p}_0.index", EDGE_INDEX,
                           count=min(_READ_BACK, self.edges - start), offset=start * EDGE_INDEX.itemsize)


def _kept_alias(ids: np.ndarray) -> np.ndarray:
    """NodeAliasWriter's records of nodes that keep themselves (prob 1, no alias)."""
    alias = np.zeros(len(ids), NODE_ALIAS)
    alias["left"] = ids
    alias["prob"] = 1.0
    return alias


def _kept_edges(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """EdgeAliasWriter's records of edges that keep themselves (prob 1, no alias)."""
    alias = np.zeros(len(src), EDGE_ALIAS)
    alias["src"] = src
    alias["dst"] = dst
    alias["prob"] = 1.0
    return alias


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
