"""Graphs for node classification: a synthetic community graph and the Planetoid citation graphs.

Every loader returns a `Graph` in one canonical form, validated on construction, so the converter
and the trainers never re-check it.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PLANETOID = ("cora", "citeseer", "pubmed")
DATASETS = (*PLANETOID, "synthetic")
PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")

# Planetoid's split sizes: 20 labelled nodes per class to train on, 500 to validate, 1000 to test.
TRAIN_PER_CLASS = 20
VAL_SIZE = 500
TEST_SIZE = 1000


@dataclass(frozen=True)
class Graph:
    """An undirected, node-labelled graph with a train/validation/test split.

    features: float32 [N, F]. labels: int64 [N], -1 where a node has no label (Planetoid's
    featureless Citeseer test gaps, unlabelled rows). edges: int64 [E, 2], each undirected edge
    exactly once as (u, v) with u < v, no self-loops, sorted; the store writes both directions.
    train_ids/val_ids/test_ids: int64, disjoint, sorted, labelled nodes only.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    edges: np.ndarray
    train_ids: np.ndarray
    val_ids: np.ndarray
    test_ids: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        _check_array("features", self.features, np.float32, 2)
        n = self.features.shape[0]
        if n < 1:
            raise ValueError("Graph.features: a graph needs at least one node, got 0 rows")
        _check_array("labels", self.labels, np.int64, 1)
        if self.labels.shape[0] != n:
            raise ValueError(f"Graph.labels: expected {n} labels (one per features row), "
                             f"got {self.labels.shape[0]}")
        if self.num_classes < 1:
            raise ValueError(f"Graph.num_classes: must be >= 1, got {self.num_classes}")
        if self.labels.size and (self.labels.min() < -1 or self.labels.max() >= self.num_classes):
            raise ValueError(f"Graph.labels: must be in -1..{self.num_classes - 1} (-1 = unlabelled), "
                             f"got {self.labels.min()}..{self.labels.max()}")
        _check_array("edges", self.edges, np.int64, 2)
        if self.edges.shape[1] != 2:
            raise ValueError(f"Graph.edges: expected shape [E, 2], got {list(self.edges.shape)}")
        if self.edges.size:
            if self.edges.min() < 0 or self.edges.max() >= n:
                raise ValueError(f"Graph.edges: node ids must be in 0..{n - 1}, "
                                 f"got {self.edges.min()}..{self.edges.max()}")
            if not np.array_equal(self.edges, canonical_edges(self.edges, n)):
                raise ValueError("Graph.edges: must hold each undirected edge once as (u, v) with u < v, "
                                 "sorted, no self-loops; build it with canonical_edges(pairs, num_nodes)")
        seen = np.zeros(n, dtype=bool)
        for field in ("train_ids", "val_ids", "test_ids"):
            ids = getattr(self, field)
            _check_array(field, ids, np.int64, 1)
            if ids.size == 0:
                continue
            if ids.min() < 0 or ids.max() >= n:
                raise ValueError(f"Graph.{field}: node ids must be in 0..{n - 1}, "
                                 f"got {ids.min()}..{ids.max()}")
            if np.any(np.diff(ids) <= 0):
                raise ValueError(f"Graph.{field}: must be sorted and unique")
            if seen[ids].any():
                raise ValueError(f"Graph.{field}: overlaps an earlier split at node {ids[seen[ids]][0]}")
            if (self.labels[ids] < 0).any():
                raise ValueError(f"Graph.{field}: node {ids[self.labels[ids] < 0][0]} has no label (-1)")
            seen[ids] = True

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def split_types(self) -> np.ndarray:
        """Node type per node as the store records it: 0 train, 1 validation, 2 test, 3 unlabelled."""
        types = np.full(self.num_nodes, 3, dtype=np.int32)
        types[self.train_ids] = 0
        types[self.val_ids] = 1
        types[self.test_ids] = 2
        return types


def _check_array(field: str, value: Any, dtype: type, ndim: int) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
        is_array = isinstance(value, np.ndarray)
        got = f"{value.dtype} array of {value.ndim} dims" if is_array else type(value).__name__
        raise ValueError(f"Graph.{field}: expected a {np.dtype(dtype)} array of {ndim} dims, got {got}")


def canonical_edges(pairs: np.ndarray, num_nodes: int) -> np.ndarray:
    """Undirected edges from any pairs: (min, max) per pair, self-loops and duplicates dropped, sorted.

    Self-loops are dropped because GNN layers add each node's own features explicitly.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    lo = np.minimum(pairs[:, 0], pairs[:, 1])
    hi = np.maximum(pairs[:, 0], pairs[:, 1])
    keep = lo != hi
    keys = np.unique(lo[keep] * num_nodes + hi[keep])
    return np.stack([keys // num_nodes, keys % num_nodes], axis=1).astype(np.int64)


def edge_homophily(graph: Graph) -> float:
    """Fraction of edges, among those joining two labelled nodes, that join nodes of the same class."""
    src, dst = graph.labels[graph.edges[:, 0]], graph.labels[graph.edges[:, 1]]
    known = (src >= 0) & (dst >= 0)
    if not known.any():
        raise ValueError(f"graph {graph.name!r} has no edge between two labelled nodes")
    return float((src[known] == dst[known]).mean())


def synthetic(num_nodes: int = 3000, num_classes: int = 5, feature_dim: int = 32, seed: int = 0,
              avg_degree: float = 8.0, homophily: float = 0.8, feature_signal: float = 0.15) -> Graph:
    """A stochastic-block-model graph whose labels a GNN can learn better than a feature-only model.

    Each node has one of `num_classes` balanced communities. An edge's far end is in the same
    community with probability `homophily`, so neighbourhoods carry the label. Features are the
    community centroid scaled by `feature_signal` plus unit Gaussian noise: weakly informative alone,
    informative once averaged over neighbours. Deterministic in `seed`.
    """
    if num_classes < 2:
        raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
    if num_nodes < 4 * num_classes:
        raise ValueError(f"synthetic: num_nodes must be >= 4 * num_classes ({4 * num_classes}) so every "
                         f"class has nodes to train, validate and test on, got {num_nodes}")
    if feature_dim < 1:
        raise ValueError(f"synthetic: feature_dim must be >= 1, got {feature_dim}")
    if avg_degree <= 0:
        raise ValueError(f"synthetic: avg_degree must be > 0, got {avg_degree}")
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"synthetic: homophily must be in [0, 1], got {homophily}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_nodes, dtype=np.int64) % num_classes)

    members = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    draws = int(round(num_nodes * avg_degree / 2))
    src = rng.integers(0, num_nodes, size=draws)
    same = rng.random(draws) < homophily
    other = (labels[src] + rng.integers(1, num_classes, size=draws)) % num_classes
    dst_class = np.where(same, labels[src], other)
    dst = members[starts[dst_class] + (rng.random(draws) * sizes[dst_class]).astype(np.int64)]
    edges = canonical_edges(np.stack([src, dst], axis=1), num_nodes)

    centroids = rng.normal(size=(num_classes, feature_dim))
    noise = rng.normal(size=(num_nodes, feature_dim))
    features = (feature_signal * centroids[labels] + noise).astype(np.float32)
    train, val, test = _planetoid_like_split(labels, num_classes, rng)
    return Graph(f"synthetic-{num_nodes}-{num_classes}-{feature_dim}-s{seed}", features, labels, edges,
                 train, val, test, num_classes)


def _planetoid_like_split(labels: np.ndarray, num_classes: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 per class to train, then 500 validation and 1000 test; all scaled down for small graphs."""
    n = labels.shape[0]
    scale = min(1.0, n / (TRAIN_PER_CLASS * num_classes + VAL_SIZE + TEST_SIZE))
    per_class = max(1, int(TRAIN_PER_CLASS * scale))
    order = rng.permutation(n)
    train = np.concatenate([order[labels[order] == c][:per_class] for c in range(num_classes)])
    rest = order[~np.isin(order, train)]
    n_val = max(1, int(VAL_SIZE * scale))
    n_test = max(1, min(int(TEST_SIZE * scale), rest.size - n_val))
    return np.sort(train), np.sort(rest[:n_val]), np.sort(rest[n_val:n_val + n_test])


class _PlanetoidUnpickler(pickle.Unpickler):
    """Planetoid files are pickles: allow only the numpy/scipy/container types they hold, never code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("collections", "defaultdict"),
                ("collections", "OrderedDict"), ("__builtin__", "list"), ("builtins", "list"),
                ("__builtin__", "dict"), ("builtins", "dict"), ("copy_reg", "_reconstructor"),
                ("__builtin__", "object"), ("__builtin__", "set"), ("builtins", "set"),
                # Python 3 writes bytes in protocol-2 pickles through codecs.encode (harmless).
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        sparse = module.startswith("scipy.sparse") and name.endswith("_matrix")
        if (module, name) in self._ALLOWED or sparse:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a type Planetoid files hold; refusing to load")


def _read_pickle(path: Path) -> Any:
    # Planetoid pickles were written by Python 2 and name scipy's long-deprecated module paths.
    with warnings.catch_warnings(), path.open("rb") as f:
        warnings.simplefilter("ignore", DeprecationWarning)
        return _PlanetoidUnpickler(f, encoding="latin1").load()


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix, dtype=np.float32)


def _labels_of(onehot: np.ndarray) -> np.ndarray:
    """Class per row of a one-hot matrix, -1 for an all-zero row (a node without a label)."""
    onehot = np.asarray(onehot)
    return np.where(onehot.any(axis=1), onehot.argmax(axis=1), -1).astype(np.int64)


def planetoid_files(name: str, data_dir: str | Path) -> dict[str, Path]:
    """The eight files of a Planetoid dataset, by part name; a clear error naming any that is missing."""
    if name not in PLANETOID:
        raise ValueError(f"unknown Planetoid dataset {name!r}: expected one of {', '.join(PLANETOID)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} is not a directory: point it at the folder holding "
                                f"ind.{name}.{{{','.join(PLANETOID_PARTS)}}}")
    files = {part: root / f"ind.{name}.{part}" for part in PLANETOID_PARTS}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: Planetoid dataset {name!r} needs the files "
                                f"ind.{name}.{{{','.join(PLANETOID_PARTS)}}} in {root}")
    return files


def load_planetoid(name: str, data_dir: str | Path) -> Graph:
    """Cora, Citeseer or Pubmed from the standard Planetoid files, with the standard split.

    train = the len(y) nodes of x (= the first rows of allx); val = the next 500; test = the
    labelled ids in test.index. Row i of tx/ty belongs to node test.index[i] (the file is not
    sorted: every Planetoid loader reorders).
    Test ids missing from test.index inside its range (Citeseer's isolated nodes) get zero features
    and no label, as in Kipf's GCN loader. Features are row-normalized (each row sums to 1, zero
    rows stay zero), as GCN preprocesses them.
    """
    files = planetoid_files(name, data_dir)
    y, tx, ty, allx, ally, adjacency = (_read_pickle(files[part])
                                        for part in ("y", "tx", "ty", "allx", "ally", "graph"))
    test_index = np.loadtxt(files["test.index"], dtype=np.int64, ndmin=1)
    allx, tx = _dense(allx), _dense(tx)
    if tx.shape[0] != test_index.shape[0]:
        raise ValueError(f"{files['tx']}: {tx.shape[0]} rows but {files['test.index']} lists "
                         f"{test_index.shape[0]} ids; the files are from different datasets")
    num_nodes = int(max(allx.shape[0], test_index.max() + 1))
    features = np.zeros((num_nodes, allx.shape[1]), dtype=np.float32)
    features[: allx.shape[0]] = allx
    features[test_index] = tx
    rowsum = features.sum(axis=1, keepdims=True)
    features = np.divide(features, rowsum, out=np.zeros_like(features), where=rowsum > 0)

    labels = np.full(num_nodes, -1, dtype=np.int64)
    labels[: allx.shape[0]] = _labels_of(ally)
    labels[test_index] = _labels_of(ty)
    num_classes = int(np.asarray(ally).shape[1])

    pairs = [(int(u), int(v)) for u, neighbours in adjacency.items() for v in neighbours]
    edges = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    if edges.size and edges.max() >= num_nodes:
        raise ValueError(f"{files['graph']}: node id {edges.max()} has no features (only {num_nodes} nodes)")

    n_train = int(np.asarray(y).shape[0])
    train = np.arange(n_train, dtype=np.int64)
    # Clamped to the labelled rows (allx) so that graphs smaller than Cora's keep a valid split.
    val = np.arange(n_train, min(n_train + VAL_SIZE, allx.shape[0]), dtype=np.int64)
    test = np.sort(test_index)
    # Kipf's loader evaluates on every test id; here an unlabelled one would only add noise.
    test = test[labels[test] >= 0]
    return Graph(name, features, labels, canonical_edges(edges, num_nodes), train, val, test, num_classes)


def load(dataset: str, data_dir: str | Path | None = None) -> Graph:
    """A dataset by name: `synthetic` (built in, no files) or a Planetoid graph read from `data_dir`."""
    if dataset == "synthetic":
        return synthetic()
    if dataset not in PLANETOID:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if not data_dir:
        raise ValueError(f"dataset {dataset!r} needs data_dir: the folder holding "
                         f"ind.{dataset}.{{{','.join(PLANETOID_PARTS)}}}")
    return load_planetoid(dataset, data_dir)
