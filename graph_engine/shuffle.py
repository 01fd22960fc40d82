"""The conversion's two stages, as plain functions over folders, so one process, a process pool or a
Flyte map task can run them (graph_engine/convert.py, workflows/convert_graph.py).

1. Scatter: each input shard (a node or an edge table file) is read batch by batch and its rows
   appended to raw per-partition spill files: a node goes to `partition_of(id)`, an edge to its
   source's partition, and the edge's dst id to the dst's partition (to check it names a node).
   No shard needs another; memory is one batch.
2. Build: each partition reads only its spill files, checks its ids (duplicates, edges naming unknown
   nodes), sorts its nodes by id and its edges by (src, dst), and writes DeepGNN's binary files
   (graph_engine/binary.py). A partition bigger than `BUCKET_BYTES` of working set is first routed,
   a piece at a time, into ranges of ids (an external sort) and built range by range, so memory is
   one range's ids and edges, whatever the partition's size (features stream in chunks); only a
   partition with unequal edge weights holds its weights at once, for DeepGNN's alias table.

Then `finish` writes the split id files (the partitions' sorted lists merged a piece at a time),
DeepGNN's meta.json and graphfleet's manifest.

Spill layout under a scratch folder: `nodes/<p>/<shard>.{ids,types,labels,features}`,
`edges/<p>/<shard>.{src,dst,weight}`, `refs/<p>/<shard>.ids`, `splits/<p>.<split>`, and while a
partition builds in ranges `buckets/<p>/<range>/{nodes,edges,refs}/<shard>.*`; all raw little-endian
arrays.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from graph_engine import binary
from graph_engine.tables import SPLITS, EdgeBatch, NodeBatch, TableError

INFO_FORMAT = 2
# Nodes per chunk handed to the binary writer: bounds the feature rows held at once.
_CHUNK = 1 << 16
# A partition builds in ranges of ids of about this many bytes of working set (an edge's ids, weight,
# sort order and output records; a node's the same plus its features), so a worker's memory does not
# grow with the partition.
BUCKET_BYTES = 128 << 20
_EDGE_BYTES = _NODE_BYTES = 64
# Rows read from a spill file at a time when routing it into ranges.
_PIECE = 1 << 20
_FIELDS = {"ids": np.int64, "types": np.int32, "labels": np.int64, "features": np.float32,
           "src": np.int64, "dst": np.int64, "weight": np.float32}


class IdError(TableError):
    """A node id problem found in a partition (duplicate, or an edge naming no node): carries the
    column and the id, so the caller can find the rows in the input files (tables.locate)."""

    def __init__(self, message: str, table: str, column: str, value: int) -> None:
        super().__init__(message)
        self.table, self.column, self.value = table, column, value

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.table, self.column, self.value)


def partition_of(ids: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each node id: splitmix64's finalizer, mod `partitions`. A hash, not `id % P`,
    so ids with a common stride (multiples of 1000, Spark's shard-prefixed ids) still spread evenly;
    a pure function of the id, so any worker can place any edge without a global lookup."""
    x = ids.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(partitions)).astype(np.int64)


def _append(folder: Path, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("ab") as f:
        np.ascontiguousarray(array).tofile(f)


def _groups(parts: np.ndarray, partitions: int) -> Iterator[tuple[int, np.ndarray]]:
    """(partition, row indices in input order) for every partition these rows touch."""
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    for p in range(partitions):
        if bounds[p] < bounds[p + 1]:
            yield p, order[bounds[p]:bounds[p + 1]]


def scatter_nodes(batches: Iterable[NodeBatch], shard: int, partitions: int, spill: Path) -> dict[str, Any]:
    """Spill one node shard; report its row count, feature length and largest label."""
    rows, dim, max_label = 0, None, -1
    for batch in batches:
        if dim is not None and batch.features.shape[1] != dim:
            raise TableError(f"{batch.origin.file}: column 'features' has {batch.features.shape[1]} values "
                             f"at {batch.origin.rows(0)}, {dim} before it (ragged features)")
        dim = batch.features.shape[1]
        for p, rows_of in _groups(partition_of(batch.ids, partitions), partitions):
            folder = spill / "nodes" / str(p)
            for name in ("ids", "types", "labels", "features"):
                _append(folder, f"{shard:06d}.{name}", getattr(batch, name)[rows_of])
        rows += len(batch.ids)
        max_label = max(max_label, int(batch.labels.max(initial=-1)))
    return {"rows": rows, "dim": dim, "max_label": max_label}


def scatter_edges(batches: Iterable[EdgeBatch], shard: int, partitions: int, spill: Path,
                  symmetrize: bool) -> dict[str, Any]:
    """Spill one edge shard (with each edge's reverse when `symmetrize`); report its edge count."""
    edges = 0
    for batch in batches:
        src, dst, weight = batch.src, batch.dst, batch.weight
        if symmetrize:
            src, dst, weight = np.concatenate([src, dst]), np.concatenate([dst, src]), np.tile(weight, 2)
        for p, rows_of in _groups(partition_of(src, partitions), partitions):
            folder = spill / "edges" / str(p)
            _append(folder, f"{shard:06d}.src", src[rows_of])
            _append(folder, f"{shard:06d}.dst", dst[rows_of])
            _append(folder, f"{shard:06d}.weight", weight[rows_of])
        # Under symmetrize every id is some edge's src, checked where that edge lands.
        if not symmetrize:
            for p, rows_of in _groups(partition_of(dst, partitions), partitions):
                _append(spill / "refs" / str(p), f"{shard:06d}.ids", dst[rows_of])
        edges += len(src)
    return {"edges": edges}


def _spilled(folder: Path, suffix: str) -> list[Path]:
    return sorted(folder.glob(f"*.{suffix}")) if folder.is_dir() else []


def _rows(path: Path, suffix: str) -> int:
    return path.stat().st_size // np.dtype(_FIELDS[suffix]).itemsize


def _pieces(folder: Path, suffixes: tuple[str, ...], dim: int = 0) -> Iterator[tuple[str, list[np.ndarray]]]:
    """(file stem, arrays) for the spill files with these suffixes (one row count per stem; a
    `features` row is `dim` values), `_PIECE` rows at a time."""
    for first in _spilled(folder, suffixes[0]):
        total = _rows(first, suffixes[0])
        for a in range(0, total, _PIECE):
            n = min(_PIECE, total - a)
            arrays = []
            for s in suffixes:
                width = dim if s == "features" else 1
                item = np.dtype(_FIELDS[s]).itemsize * width
                arrays.append(np.fromfile(first.with_suffix(f".{s}"), _FIELDS[s], count=n * width,
                                          offset=a * item).reshape(n, width) if s == "features" else
                              np.fromfile(first.with_suffix(f".{s}"), _FIELDS[s], count=n, offset=a * item))
            yield first.stem, arrays


def _load(folder: Path, suffix: str) -> np.ndarray:
    files = _spilled(folder, suffix)
    dtype = _FIELDS[suffix]
    if not files:
        return np.zeros(0, dtype)
    return np.concatenate([np.fromfile(f, dtype) for f in files])


def _lookup(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `wanted` in `sorted_ids` and whether each was found."""
    pos = np.searchsorted(sorted_ids, wanted)
    clipped = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (pos < len(sorted_ids)) & (sorted_ids[clipped] == wanted) if len(sorted_ids) else \
        np.zeros(len(wanted), bool)
    return clipped, found


def _node_chunks(folder: Path, dim: int, order: np.ndarray, ids: np.ndarray, types: np.ndarray,
                 labels: np.ndarray) -> Iterator[binary.NodeChunk]:
    """Nodes in the given order (`order`: their rows in the spill files of `folder`), `_CHUNK` at a
    time; features gathered from those files."""
    files = _spilled(folder, "features")
    sizes = [f.stat().st_size // (4 * dim) if dim else _rows(f.with_suffix(".ids"), "ids") for f in files]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    maps = [np.memmap(f, np.float32, "r").reshape(-1, dim) if dim and size else None
            for f, size in zip(files, sizes, strict=True)]
    for a in range(0, len(order), _CHUNK):
        rows = order[a:a + _CHUNK]
        features = np.zeros((len(rows), dim), np.float32)
        where = np.searchsorted(starts, rows, side="right") - 1
        for k in np.unique(where):
            pick = where == k
            if maps[k] is not None:
                features[pick] = maps[k][rows[pick] - starts[k]]
        part = slice(a, a + len(rows))
        yield binary.NodeChunk(ids[part], types[part], features, labels[part])


def _bucket_bounds(nodes: Path, edges: Path, rows: int, buckets: int) -> np.ndarray:
    """Ids splitting the partition's `rows` nodes plus edges into `buckets` ranges of about equal rows
    (from a sample of node ids and edge sources, read a piece at a time)."""
    step = max(1, rows // (buckets * 1024))
    sample = np.sort(np.concatenate([ids[::step] for folder, suffix in ((nodes, "ids"), (edges, "src"))
                                     for _, (ids,) in _pieces(folder, (suffix,))]))
    return np.unique(sample[np.arange(1, buckets) * len(sample) // buckets])  # a hub's id may repeat


def _split_into_buckets(spill: Path, p: int, dim: int, bounds: np.ndarray) -> list[Path]:
    """Route partition `p`'s spill files, a piece at a time, into one folder per id range (in id order)
    with the same layout."""
    root = spill / "buckets" / str(p)
    if root.exists():  # left by an attempt that failed: appending to it would double its rows
        shutil.rmtree(root)
    folders = [root / str(b) for b in range(len(bounds) + 1)]
    routes = (("nodes", ("ids", "types", "labels", "features")), ("edges", ("src", "dst", "weight")),
              ("refs", ("ids",)))
    for table, suffixes in routes:
        for stem, arrays in _pieces(spill / table / str(p), suffixes, dim):
            bucket = np.searchsorted(bounds, arrays[0], side="right")  # by node id, edge src, ref id
            for b, rows_of in _groups(bucket, len(folders)):
                for suffix, array in zip(suffixes, arrays, strict=True):
                    _append(folders[b] / table, f"{stem}.{suffix}", array[rows_of])
    return folders


def _equal_weights(edges: Path) -> bool:
    low, high = np.inf, -np.inf
    for _, (weight,) in _pieces(edges, ("weight",)):
        low, high = min(low, float(weight.min())), max(high, float(weight.max()))
    return not low < high


def build_partition(spill: Path, p: int, dim: int, out: Path) -> dict[str, Any]:
    """Check and write partition `p` from its spill files into `out`; return its report.

    Nodes are written in id order, each node's edges in dst order (ties in input order). A partition
    of more than `BUCKET_BYTES` of working set is first split into ranges of ids and built range by
    range, so memory is one range's whatever the partition's size. Split ids go to
    `spill/splits/<p>.<split>` for `finish`.
    """
    nodes, edges = spill / "nodes" / str(p), spill / "edges" / str(p)
    num_nodes = sum(_rows(f, "ids") for f in _spilled(nodes, "ids"))
    if not num_nodes:
        raise TableError(f"partition {p} gets no node (nodes are placed by a hash of their id); "
                         "use fewer partitions")
    num_edges = sum(_rows(f, "src") for f in _spilled(edges, "src"))
    buckets = -(-(num_nodes * (_NODE_BYTES + 4 * dim) + num_edges * _EDGE_BYTES) // BUCKET_BYTES)
    writer = binary.PartitionWriter(out, p, _equal_weights(edges))
    splits = spill / "splits"
    splits.mkdir(exist_ok=True)
    for name in SPLITS:  # ranges append to them; start empty, also when a failed attempt is retried
        (splits / f"{p}.{name}").write_bytes(b"")
    if buckets == 1:
        _build_bucket(nodes, edges, spill / "refs" / str(p), dim, p, writer, splits)
    else:
        bounds = _bucket_bounds(nodes, edges, num_nodes + num_edges, buckets)
        for folder in _split_into_buckets(spill, p, dim, bounds):
            _build_bucket(folder / "nodes", folder / "edges", folder / "refs", dim, p, writer, splits)
            if folder.exists():  # a range may hold no row
                shutil.rmtree(folder)
    return writer.close()


def _build_bucket(nodes: Path, edges: Path, refs: Path, dim: int, p: int,
                  writer: binary.PartitionWriter, splits: Path) -> None:
    """Check one range of ids of partition `p` and hand it to `writer`: nodes sorted by id, edges by
    (src, dst); an edge's source position found by one merge-like pass, not a lookup per edge."""
    ids = _load(nodes, "ids")
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    same = np.flatnonzero(ids[1:] == ids[:-1])
    if len(same):
        value = int(ids[same[0]])
        raise IdError(f"duplicate node id {value}", "nodes", "id", value)
    wanted = np.sort(_load(refs, "ids"))
    _, found = _lookup(ids, wanted)
    if not found.all():
        value = int(wanted[np.flatnonzero(~found)[0]])
        raise IdError(f"an edge's dst {value} is not a node id", "edges", "dst", value)
    del wanted, found
    src, dst = _load(edges, "src"), _load(edges, "dst")
    sort = np.lexsort((dst, src))
    src, dst, weight = src[sort], dst[sort], _load(edges, "weight")[sort]
    del sort
    src_index, found = _lookup(ids, src)
    if not found.all():
        value = int(src[np.flatnonzero(~found)[0]])
        raise IdError(f"an edge's src {value} is not a node id", "edges", "src", value)
    del src, found
    types = _load(nodes, "types")[order]
    labels = _load(nodes, "labels")[order].astype(np.float32)
    writer.add(_node_chunks(nodes, dim, order, ids, types, labels), len(ids), src_index, dst, weight)
    for name, code in SPLITS.items():
        with (splits / f"{p}.{name}").open("ab") as f:
            ids[types == code].tofile(f)


def _merged(files: list[Path]) -> Iterator[np.ndarray]:
    """The ids of these files (each sorted), merged in order a piece at a time: memory is a piece per
    file, not the graph's split."""
    piece = max(1, _PIECE // max(len(files), 1))
    total = [_rows(f, "ids") for f in files]
    read = [0] * len(files)
    held = [np.zeros(0, np.int64) for _ in files]
    while True:
        for k, f in enumerate(files):
            if len(held[k]) < piece and read[k] < total[k]:
                n = min(piece, total[k] - read[k])
                held[k] = np.concatenate([held[k], np.fromfile(f, np.int64, count=n, offset=read[k] * 8)])
                read[k] += n
        live = [k for k in range(len(files)) if len(held[k])]
        if not live:
            return
        # Ids up to the smallest last held id of a file with more to read are all held already.
        unread = [held[k][-1] for k in live if read[k] < total[k]]
        bound = min(unread) if unread else max(held[k][-1] for k in live)
        cuts = {k: int(np.searchsorted(held[k], bound, side="right")) for k in live}
        yield np.sort(np.concatenate([held[k][:cuts[k]] for k in live]))
        for k in live:
            held[k] = held[k][cuts[k]:]


def finish(spill: Path, out: Path, reports: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Write the split id files, the manifest (graphfleet.json, with every file's size and checksum)
    and DeepGNN's meta.json into `out`; return the manifest."""
    from graph_engine.store import INFO, META, split_file

    files: dict[str, dict[str, Any]] = {}
    for r in reports:
        files.update(r["files"])
    files.update(binary.pad_alias_files(out, reports))
    splits = {}
    for name in SPLITS:
        parts = [spill / "splits" / f"{r['partition']['id']}.{name}" for r in reports]
        hashed = binary.HashedFiles(out)
        hashed.write(split_file(name), np.zeros(0, np.int64))  # the file, also for an empty split
        count = 0
        for ids in _merged(parts):
            hashed.write(split_file(name), ids)
            count += len(ids)
        files.update(hashed.close())
        splits[name] = {"file": split_file(name), "count": count}
    manifest = {**info, "format": INFO_FORMAT, "num_edges": sum(r["edge_count"] for r in reports),
                "splits": splits, "files": dict(sorted(files.items()))}
    (out / INFO).write_text(json.dumps(manifest))
    (out / META).write_text(binary.meta_json(reports))
    return manifest
