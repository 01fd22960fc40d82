"""Write a `Graph` in DeepGNN's binary format, in N partitions, to a local folder or s3://.

The layout is fixed by docs/design.md ("Graph store format"). DeepGNN's own converter
(`MultiWorkersConverter` with a `PipeDispatcher`) writes the partitions; instead of rendering the
graph as JSON text and parsing it back, a decoder reads each node straight from the graph's arrays,
the input "lines" being node ids. Node i lands in partition i % partitions (round robin over lines).

The graph is written to a scratch folder first and published only when complete: a local target is
renamed into place, an s3:// target gets its metadata uploaded last, so a half-written graph never
has a meta.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from deepgnn.graph_engine.snark.convert import MultiWorkersConverter
from deepgnn.graph_engine.snark.converter.process import (
    FLAG_ALL_DONE,
    FLAG_WORKER_FINISHED_PROCESSING,
    converter_process,
)
from deepgnn.graph_engine.snark.decoders import Decoder
from deepgnn.graph_engine.snark.dispatcher import PipeDispatcher

from graph_engine.datasets import Graph
from graph_engine.store import INFO, META, canonical_uri, filesystem, is_s3, local_path, s3_endpoint

# Float feature ids and the edge type of the store format (docs/design.md).
FEATURES_ID = 0
LABEL_ID = 1
EDGE_TYPE = 0
# Node ids handed to the dispatcher per batch.
# How long a released worker may take to finish its partition after a failure.
_WORKER_REPORT_SECONDS = 120
_BATCH = 4096

_Record = tuple[int, int, int, float, None, None, list]


class _GraphDecoder(Decoder):
    """DeepGNN decoder whose input line is a node id: yields that node, then its edges sorted by dst."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.types = graph.split_types()
        self.features = np.ascontiguousarray(graph.features)
        self.labels = graph.labels.astype(np.float32)
        both = np.concatenate([graph.edges, graph.edges[:, ::-1]])
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        self.indptr = np.searchsorted(both[:, 0], np.arange(graph.num_nodes + 1))
        self.dst = both[:, 1].tolist()

    def decode(self, line: str) -> Iterator[_Record]:
        node = int(line)
        yield (node, -1, int(self.types[node]), 1.0, None, None,
               [self.features[node], self.labels[node:node + 1]])
        for dst in self.dst[self.indptr[node]:self.indptr[node + 1]]:
            yield node, dst, EDGE_TYPE, 1.0, None, None, []


class _Inbox:
    """A worker's input pipe that remembers whether the end-of-input flag has been read."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.done = False

    def get(self) -> Any:
        line = self.conn.recv()
        if line == FLAG_ALL_DONE:
            self.done = True
        return line


def _guarded(errors: list[BaseException]) -> Callable[..., None]:
    """DeepGNN's worker, made unable to hang the converter.

    Unguarded, a worker that raises stops reading its pipe and never reports, so the dispatcher
    blocks forever. Guarded, it records the error, keeps draining its input and reports an empty
    partition; `convert` raises the error once the dispatcher has joined.
    """
    def process(q_in: Any, q_out: Any, folder: str, suffix: int, decoder: Decoder, skip_node_sampler: bool,
                skip_edge_sampler: bool, watermark: int | None = None) -> None:
        inbox = _Inbox(q_in)
        try:
            # The inbox has .get(), which DeepGNN's worker uses for anything that is not a raw Connection.
            converter_process(inbox, q_out, folder, suffix, decoder, skip_node_sampler, skip_edge_sampler,
                              watermark)
        except BaseException as err:  # noqa: B036 - re-raised by convert() in the calling thread
            errors.append(err)
            while not inbox.done:
                inbox.get()
            empty = {"node_count": 0, "edge_count": 0, "node_type_count": 0, "edge_type_count": 0,
                     "node_feature_count": 0, "edge_feature_count": 0,
                     "partition": {"id": suffix, "node_weight": [], "node_type_count": [], "edge_weight": [],
                                   "edge_type_count": []}}
            q_out.put((FLAG_WORKER_FINISHED_PROCESSING, empty))
    return process


def graph_info(graph: Graph, partitions: int) -> dict[str, Any]:
    """The `graphfleet.json` of a converted graph: what a trainer needs besides the endpoints."""
    return {"dataset": graph.name, "num_nodes": graph.num_nodes, "feature_dim": graph.feature_dim,
            "num_classes": graph.num_classes, "partitions": partitions,
            "train_ids": graph.train_ids.tolist(), "val_ids": graph.val_ids.tolist(),
            "test_ids": graph.test_ids.tolist()}


def write_partitions(graph: Graph, folder: Path, partitions: int) -> None:
    """DeepGNN's binary files, meta.json and graphfleet.json for `graph` in the existing, empty `folder`."""
    decoder = _GraphDecoder(graph)
    errors: list[BaseException] = []
    # Threads, not processes: the decoder reads the graph's arrays in place instead of pickling them.
    dispatcher = PipeDispatcher(str(folder), partitions, decoder, process=_guarded(errors), use_threads=True)
    ids = [str(i) for i in range(graph.num_nodes)]
    batches = [ids[i:i + _BATCH] for i in range(0, len(ids), _BATCH)]
    converter = MultiWorkersConverter(graph_path=str(folder), output_dir=str(folder), decoder=decoder,
                                      partition_count=partitions, dispatcher=dispatcher,
                                      file_iterator=batches)
    try:
        converter.convert()
    except BaseException:
        # Release the workers (non-daemon threads waiting on their pipes) or the process never exits.
        for _, sender in dispatcher.q_in:
            sender.send(FLAG_ALL_DONE)
        # Wait for every worker still writing into `folder` to report: the caller removes it next.
        for _ in range(partitions - len(dispatcher.partitions)):
            dispatcher.q_out.get(timeout=_WORKER_REPORT_SECONDS)
        raise
    if errors:
        raise RuntimeError(f"DeepGNN's converter failed writing to {folder}: {errors[0]!r}") from errors[0]
    (folder / INFO).write_text(json.dumps(graph_info(graph, partitions)))


def convert(graph: Graph, out_uri: str, partitions: int, *, overwrite: bool = False) -> str:
    """Write `graph` in `partitions` partitions to `out_uri` (local path, file:// or s3://); return its URI.

    The target must be absent or empty; with `overwrite=True` an existing converted graph there
    (a folder with meta.json) is replaced. s3:// uses AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"convert: graph must be a graph_engine.datasets.Graph, got {type(graph).__name__}")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"convert: partitions must be an integer >= 1, got {partitions!r}")
    if partitions > graph.num_nodes:
        raise ValueError(f"convert: partitions ({partitions}) exceeds the graph's {graph.num_nodes} nodes; "
                         f"every partition needs a node: use at most {graph.num_nodes}")
    uri = canonical_uri(out_uri)
    if is_s3(uri):
        _check_s3_target(uri, overwrite)
        with tempfile.TemporaryDirectory(prefix="graphfleet-convert-") as tmp:
            write_partitions(graph, Path(tmp), partitions)
            _upload(Path(tmp), uri, overwrite)
        return uri
    target = local_path(uri)
    _check_local_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Scratch beside the target, on the same filesystem, so publishing is one rename.
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write_partitions(graph, scratch, partitions)
        if target.exists():
            if any(target.iterdir()):
                shutil.rmtree(target)
            else:
                target.rmdir()
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return uri


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


def _check_s3_target(uri: str, overwrite: bool) -> None:
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


def _upload(folder: Path, uri: str, overwrite: bool) -> None:
    fs, path = filesystem(uri)
    if overwrite and fs.exists(f"{path}/{META}"):
        fs.rm(path, recursive=True)
    # Partition files in one batch (s3fs uploads them concurrently), metadata last: a reader that
    # finds meta.json finds every partition file too.
    data = sorted(p.name for p in folder.iterdir() if p.name not in (INFO, META))
    fs.put([str(folder / name) for name in data], [f"{path}/{name}" for name in data])
    for name in (INFO, META):
        fs.put_file(str(folder / name), f"{path}/{name}")
