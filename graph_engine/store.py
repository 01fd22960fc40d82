"""The graph store: where converted graphs live (a local folder or s3://) and what they say about themselves.

A converted graph is DeepGNN's binary partitions plus its `meta.json`, and graphfleet's own
`graphfleet.json` beside it (docs/design.md, "Graph store format").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
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


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding `uri` and the path within it.

    For s3:// the endpoint is read from the environment at each call (not at import, as fsspec's
    own config does), so a test or a pod can point at any S3-compatible store.
    """
    if is_s3(uri):
        # A fresh instance: fsspec's instance and listing caches would hide objects another process wrote.
        fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint(), skip_instance_cache=True,
                               use_listings_cache=False)
        return fs, uri.removeprefix("s3://").rstrip("/")
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
        with fs.open(target, "r") as f:
            return json.load(f)
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
