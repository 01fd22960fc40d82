"""The graph store: where converted graphs live (a local folder or s3://) and what they say about themselves.

A converted graph is DeepGNN's binary partitions plus its `meta.json`, and graphfleet's own
`graphfleet.json` beside it (docs/design.md, "Graph store format").
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

META = "meta.json"
INFO = "graphfleet.json"
# DeepGNN's own reader (snark.meta.Meta) counts partitions as the keys of this field.
PARTITIONS_FIELD = "partitions"
# Endpoint overrides for S3-compatible stores, first wins; the graph-engine servers honour the same.
ENDPOINT_ENVS = ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """The absolute local path of a `file://` URI or a plain path."""
    return Path(uri.removeprefix("file://")).resolve()


def s3_endpoint() -> str | None:
    """The S3 endpoint the environment asks for, or None for AWS's own."""
    return next((os.environ[name] for name in ENDPOINT_ENVS if os.environ.get(name)), None)


def _s3_configuration() -> tuple[int, tuple[tuple[str, str], ...]]:
    """What an S3 client is made from: the endpoint overrides and botocore's own `AWS_*` settings
    (credentials, profile, region, config files), and the process (a forked child cannot use its
    parent's client, which is bound to the parent's event loop)."""
    return os.getpid(), tuple(sorted((name, value) for name, value in os.environ.items()
                                     if name.startswith("AWS_") or name in ENDPOINT_ENVS))


_s3_lock = threading.Lock()
_s3_client: tuple[tuple[int, tuple[tuple[str, str], ...]], fsspec.AbstractFileSystem] | None = None


def _s3_filesystem() -> fsspec.AbstractFileSystem:
    """One S3 filesystem per configuration, made again when the environment changes.

    Making one builds a botocore client, ~0.2 s of CPU on fsspec's single IO thread, which serialised
    concurrent CreateTasks (docs/benchmarks.md, "Connector"); one instance serves every thread, as
    its calls all run on that IO thread's event loop. Reuse hides no writes: the listings cache is
    off and reads fetch the object, so the next read sees a rewritten file. Only the latest
    configuration is kept: a process has one at a time, and the old client is closed when dropped.
    """
    global _s3_client
    configuration = _s3_configuration()
    with _s3_lock:
        if _s3_client is None or _s3_client[0] != configuration:
            # Our own instance, not fsspec's cache, which keys on the calling thread (one client each).
            fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint(), skip_instance_cache=True,
                                   use_listings_cache=False)
            _s3_client = (configuration, fs)
        return _s3_client[1]


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding `uri` and the path within it.

    For s3:// the endpoint is read from the environment at each call (not at import, as fsspec's
    own config does), so a test or a pod can point at any S3-compatible store.
    """
    if is_s3(uri):
        return _s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"graph URI {uri!r}: expected s3://bucket/prefix, file:///path or a local path")
    return LocalFileSystem(), str(local_path(uri))


def canonical_uri(uri: str) -> str:
    """One spelling per location: `s3://bucket/prefix` without a trailing slash, or an absolute local path."""
    if is_s3(uri):
        return "s3://" + uri.removeprefix("s3://").rstrip("/")
    filesystem(uri)  # rejects unsupported schemes
    return str(local_path(uri))


def _read_json(uri: str, name: str, hint: str) -> dict[str, Any]:
    fs, path = filesystem(uri)
    target = f"{path}/{name}"
    try:
        # One GET; an opened S3 file would first ask for the object's size.
        return json.loads(fs.cat_file(target))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {name} at {uri}: {hint}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}/{name} is not valid JSON ({err}): reconvert the graph") from None


def read_meta(uri: str) -> dict[str, Any]:
    """DeepGNN's `meta.json` of the converted graph at `uri`."""
    return _read_json(uri, META, "is this a converted graph? Write one with "
                                 "graph_engine.convert.convert(graph, uri, partitions)")


def partition_count(uri: str) -> int:
    """How many partitions the converted graph at `uri` has (what its servers must cover)."""
    meta = read_meta(uri)
    partitions = meta.get(PARTITIONS_FIELD)
    if not isinstance(partitions, dict) or not partitions:
        raise ValueError(f"{uri}/{META} has no '{PARTITIONS_FIELD}' table: not written by DeepGNN's "
                         "converter; reconvert the graph")
    return len(partitions)


def read_info(uri: str) -> dict[str, Any]:
    """graphfleet's `graphfleet.json` of the converted graph at `uri` (dataset, sizes, split ids)."""
    return _read_json(uri, INFO, "graphs converted by graph_engine.convert carry it beside meta.json; "
                                 "reconvert with graph_engine.convert.convert(graph, uri, partitions)")


def split_file(split: str) -> str:
    """The file beside the manifest holding a split's node ids (sorted int64, raw little-endian)."""
    return f"{split}.ids"


def read_split(uri: str, split: str) -> np.ndarray:
    """The node ids of `split` (train/val/test) of the converted graph at `uri`, read when asked for:
    they live in their own file, not in the manifest, so a large split costs nothing until used."""
    fs, path = filesystem(uri)
    target = f"{path}/{split_file(split)}"
    try:
        data = fs.cat_file(target)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {split_file(split)} at {uri}: the graph predates split files; "
                                "reconvert it with graph_engine.convert") from None
    if len(data) % 8:
        raise ValueError(f"{uri}/{split_file(split)} is {len(data)} bytes, not whole int64 ids: reconvert")
    return np.frombuffer(data, dtype="<i8")


class CorruptGraph(ValueError):
    """A partition file does not match the manifest (truncated, corrupt or missing)."""


def partition_files(info: dict[str, Any], partitions: list[int]) -> dict[str, dict[str, Any]]:
    """The manifest entries (size, sha256) of the files these partitions are loaded from."""
    wanted = set(partitions)
    return {name: entry for name, entry in info.get("files", {}).items() if entry.get("partition") in wanted}


def verify_files(folder_uri: str, expected: dict[str, dict[str, Any]], *,
                 copy_to: Path | None = None) -> None:
    """Check each file's size and SHA-256 against the manifest, reading it once; with `copy_to`, also
    write it there (how a server fetches its partitions from s3:// and checks them in one pass).
    Raises CorruptGraph naming the first bad file."""
    import hashlib

    fs, path = filesystem(folder_uri)
    for name, entry in sorted(expected.items()):
        digest, size = hashlib.sha256(), 0
        target = (copy_to / name).open("wb") if copy_to is not None else None
        try:
            with fs.open(f"{path}/{name}", "rb") as source:
                while block := source.read(8 << 20):
                    digest.update(block)
                    size += len(block)
                    if target is not None:
                        target.write(block)
        except FileNotFoundError:
            raise CorruptGraph(f"partition file {name} is missing at {folder_uri}; "
                               "reconvert the graph") from None
        finally:
            if target is not None:
                target.close()
        if size != entry["size"]:
            raise CorruptGraph(f"partition file {folder_uri}/{name} is {size} bytes, the manifest says "
                               f"{entry['size']} (truncated or overwritten); reconvert the graph")
        if digest.hexdigest() != entry["sha256"]:
            raise CorruptGraph(f"partition file {folder_uri}/{name} fails its checksum (sha256 "
                               f"{digest.hexdigest()[:16]}..., the manifest says {entry['sha256'][:16]}...): "
                               "corrupt; reconvert the graph")
