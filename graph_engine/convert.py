"""Convert a graph into the graph store (docs/design.md, "Graph store format"), locally or to s3://.

    python -m graph_engine.convert --nodes URI --edges URI --partitions P --out URI [--symmetrize]

Input is Parquet node and edge tables (graph_engine/tables.py) or an in-memory `Graph`. Both run the
same vectorized two-stage conversion (graph_engine/shuffle.py): shards scatter to per-partition
spill files in parallel processes, then partitions build in parallel processes, then the manifest
and meta.json are written. Everything goes to a scratch folder first and is published only when
complete: a local target is renamed into place, an s3:// target gets its metadata uploaded last,
so a half-written or failed graph never has a meta.json, and nothing of a failed run is left at
the target.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from graph_engine import shuffle, tables
from graph_engine.datasets import Graph
from graph_engine.store import INFO, META, canonical_uri, filesystem, is_s3, local_path, s3_endpoint
from graph_engine.tables import EdgeBatch, NodeBatch, Origin, TableError


class _Inline(Executor):
    """Runs each call in this process: one worker, or graphs too small for a pool's start-up."""

    def map(self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        return iter([fn(*args) for args in zip(*iterables, strict=True)])


def _pool(workers: int) -> Executor:
    if workers <= 1:
        return _Inline()
    # fork: callers need no `if __name__ == "__main__"` guard (spawn re-runs an unguarded script).
    # fsspec and pyarrow reset their threads in a forked child; store.py makes each process its own S3 client.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _scatter_node_file(uri: str, shard: int, partitions: int, spill: Path) -> dict[str, Any]:
    return shuffle.scatter_nodes(tables.read_nodes(uri), shard, partitions, spill)


def _scatter_edge_file(uri: str, shard: int, partitions: int, spill: Path,
                       symmetrize: bool) -> dict[str, Any]:
    return shuffle.scatter_edges(tables.read_edges(uri), shard, partitions, spill, symmetrize)


def summarize(node_reports: list[dict[str, Any]], node_files: list[str],
             partitions: int) -> tuple[int, int, int]:
    """(nodes, feature length, classes) of the scattered node shards, checking they agree."""
    dims = {r["dim"] for r in node_reports if r["dim"] is not None}
    if len(dims) > 1:
        by_dim = {r["dim"]: f for r, f in zip(node_reports, node_files, strict=True) if r["dim"] is not None}
        raise TableError("column 'features' has different lengths in different files (ragged features): "
                         + ", ".join(f"{d} in {f}" for d, f in sorted(by_dim.items())))
    nodes = sum(r["rows"] for r in node_reports)
    if nodes < partitions:
        raise TableError(f"the node table has {nodes} rows, fewer than the {partitions} partitions; every "
                         f"partition needs a node: use at most {nodes}")
    return nodes, dims.pop() if dims else 0, max(r["max_label"] for r in node_reports) + 1


def located(err: shuffle.IdError, node_files: list[str], edge_files: list[str]) -> TableError:
    """`err` naming the input files and rows that hold its id."""
    found = tables.locate(node_files if err.table == "nodes" else edge_files, err.column, err.value)
    return TableError(f"{err}: column {err.column!r}" + (" at " + "; ".join(found) if found else ""))


def _build(spill: Path, dim: int, out: Path, partitions: int, pool: Executor,
           locate: Callable[[shuffle.IdError], TableError]) -> list[dict[str, Any]]:
    try:
        return list(pool.map(shuffle.build_partition, [spill] * partitions, range(partitions),
                             [dim] * partitions, [out] * partitions))
    except shuffle.IdError as err:
        raise locate(err) from None


def write_tables(nodes_uri: str, edges_uri: str, folder: Path, spill: Path, partitions: int, *,
                 symmetrize: bool = False, name: str = "parquet", workers: int = 1) -> dict[str, Any]:
    """Convert the Parquet tables into the graph store in the empty `folder`; return its manifest."""
    node_files = tables.shards(nodes_uri)
    edge_files = tables.shards(edges_uri)
    with _pool(min(workers, len(node_files) + len(edge_files))) as pool:
        node_reports = list(pool.map(_scatter_node_file, node_files, range(len(node_files)),
                                     [partitions] * len(node_files), [spill] * len(node_files)))
        nodes, dim, classes = summarize(node_reports, node_files, partitions)
        list(pool.map(_scatter_edge_file, edge_files, range(len(edge_files)), [partitions] * len(edge_files),
                      [spill] * len(edge_files), [symmetrize] * len(edge_files)))

    with _pool(min(workers, partitions)) as pool:
        reports = _build(spill, dim, folder, partitions, pool,
                         lambda err: located(err, node_files, edge_files))
    info = {"dataset": name, "num_nodes": nodes, "feature_dim": dim, "num_classes": max(classes, 1),
            "partitions": partitions}
    return shuffle.finish(spill, folder, reports, info)


def write_graph(graph: Graph, folder: Path, spill: Path, partitions: int) -> dict[str, Any]:
    """The store for an in-memory `Graph` (ids 0..N-1, both directions of every edge) in `folder`."""
    import numpy as np

    ids = np.arange(graph.num_nodes, dtype=np.int64)
    origin = Origin(f"Graph {graph.name!r}", 0)
    shuffle.scatter_nodes([NodeBatch(ids, graph.split_types(), graph.features, graph.labels, origin)], 0,
                          partitions, spill)
    src, dst = graph.edges[:, 0], graph.edges[:, 1]
    shuffle.scatter_edges([EdgeBatch(src, dst, np.ones(len(src), np.float32), origin)], 0, partitions, spill,
                          symmetrize=True)
    reports = _build(spill, graph.feature_dim, folder, partitions, _Inline(),
                     lambda err: TableError(f"{err}: in {origin.file}"))
    info = {"dataset": graph.name, "num_nodes": graph.num_nodes, "feature_dim": graph.feature_dim,
            "num_classes": graph.num_classes, "partitions": partitions}
    return shuffle.finish(spill, folder, reports, info)


def _check_partitions(partitions: object) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"convert: partitions must be an integer >= 1, got {partitions!r}")
    return partitions


def _publish(out_uri: str, overwrite: bool, write: Callable[[Path, Path], Any]) -> str:
    """Run `write(folder, spill)` in scratch space and publish the folder at `out_uri` only if it succeeds."""
    uri = canonical_uri(out_uri)
    if is_s3(uri):
        check_s3_target(uri, overwrite)
        with tempfile.TemporaryDirectory(prefix="graphfleet-convert-") as tmp:
            folder, spill = Path(tmp) / "graph", Path(tmp) / "spill"
            folder.mkdir()
            write(folder, spill)
            upload(folder, uri, overwrite)
        return uri
    target = local_path(uri)
    _check_local_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Scratch beside the target, on the same filesystem, so publishing is one rename.
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        folder, spill = scratch / "graph", scratch / "spill"
        folder.mkdir()
        write(folder, spill)
        if target.exists():
            if any(target.iterdir()):
                shutil.rmtree(target)
            else:
                target.rmdir()
        os.rename(folder, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return uri


def convert(graph: Graph, out_uri: str, partitions: int, *, overwrite: bool = False) -> str:
    """Write `graph` in `partitions` partitions to `out_uri` (local path, file:// or s3://); return its URI.

    The target must be absent or empty; with `overwrite=True` an existing converted graph there
    (a folder with meta.json) is replaced. s3:// uses AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"convert: graph must be a graph_engine.datasets.Graph, got {type(graph).__name__}")
    _check_partitions(partitions)
    if partitions > graph.num_nodes:
        raise ValueError(f"convert: partitions ({partitions}) exceeds the graph's {graph.num_nodes} nodes; "
                         f"every partition needs a node: use at most {graph.num_nodes}")
    return _publish(out_uri, overwrite, lambda folder, spill: write_graph(graph, folder, spill, partitions))


def convert_tables(nodes_uri: str, edges_uri: str, out_uri: str, partitions: int, *, symmetrize: bool = False,
                   overwrite: bool = False, name: str | None = None, workers: int | None = None) -> str:
    """Convert Parquet node and edge tables (a file or a folder of shards each, local or s3://) into
    the graph store at `out_uri`, with the target rules of `convert`; return its URI."""
    _check_partitions(partitions)
    label = name or canonical_uri(out_uri).rstrip("/").rsplit("/", 1)[-1]
    return _publish(out_uri, overwrite, lambda folder, spill: write_tables(
        nodes_uri, edges_uri, folder, spill, partitions, symmetrize=symmetrize, name=label,
        workers=workers or default_workers()))


def _occupied(what: str, overwrite: bool) -> str:
    fix = "choose an empty location" if overwrite else "choose an empty location or pass overwrite=True"
    return f"convert: {what}; {fix}"


def _check_local_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"convert: {target} is a file; the graph needs a folder there")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / META).is_file():
        raise FileExistsError(_occupied(f"{target} holds files and is not a converted graph", True))
    if not overwrite:
        raise FileExistsError(_occupied(f"{target} already holds a converted graph", False))


def check_s3_target(uri: str, overwrite: bool) -> None:
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        raise FileNotFoundError(f"convert: bucket {bucket!r} does not exist at the S3 endpoint "
                                f"({s3_endpoint() or 'AWS default'}); "
                                "create it first or check AWS_ENDPOINT_URL")
    if path == bucket or not fs.exists(path):
        if path == bucket and fs.ls(bucket):
            raise FileExistsError(_occupied(f"bucket {uri} is not empty; write the graph under a prefix",
                                            True))
        return
    if not fs.exists(f"{path}/{META}"):
        raise FileExistsError(_occupied(f"{uri} holds objects and is not a converted graph", True))
    if not overwrite:
        raise FileExistsError(_occupied(f"{uri} already holds a converted graph", False))


def upload(folder: Path, uri: str, overwrite: bool = False) -> None:
    """Publish the store files in `folder` at s3:// `uri`, metadata last."""
    fs, path = filesystem(uri)
    if overwrite and fs.exists(f"{path}/{META}"):
        fs.rm(path, recursive=True)
    # Partition files in one batch (s3fs uploads them concurrently), metadata last: a reader that
    # finds meta.json finds every partition file too.
    data = sorted(p.name for p in folder.iterdir() if p.name not in (INFO, META))
    fs.put([str(folder / name) for name in data], [f"{path}/{name}" for name in data])
    for name in (INFO, META):
        fs.put_file(str(folder / name), f"{path}/{name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graph_engine.convert",
                                     description="Convert Parquet node and edge tables into the graph store.")
    parser.add_argument("--nodes", required=True, help="node table: a Parquet file or a folder of shards "
                        "(local or s3://); columns id, features, optional label and split")
    parser.add_argument("--edges", required=True, help="edge table: columns src, dst, optional weight")
    parser.add_argument("--partitions", type=int, required=True, help="partitions to write")
    parser.add_argument("--out", required=True, help="where the graph goes: a folder or s3://bucket/prefix")
    parser.add_argument("--symmetrize", action="store_true", help="add the reverse of every edge")
    parser.add_argument("--overwrite", action="store_true", help="replace a converted graph at --out")
    parser.add_argument("--name", help="dataset name in the manifest (default: the last part of --out)")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: this machine's cores)")
    ns = parser.parse_args(argv)
    try:
        uri = convert_tables(ns.nodes, ns.edges, ns.out, ns.partitions, symmetrize=ns.symmetrize,
                             overwrite=ns.overwrite, name=ns.name, workers=ns.workers or None)
    except (TableError, ValueError, OSError) as err:
        print(f"convert: {err}; nothing was written at {ns.out}", file=sys.stderr)
        return 1
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
