"""The partition count of a converted graph, as create() reads it on CreateTask's request path.

`graph_engine.store` builds a fresh S3 filesystem for every read, and with it a botocore client:
~0.2 s of CPU, all of it on fsspec's one IO thread. Sixteen concurrent CreateTasks took 4 s each for
meta.json alone on 2 cores; through one reused filesystem, 0.27 s (docs/benchmarks.md, "Connector").
So the connector reads through fsspec's cached instance for the current endpoint. Reuse hides no
writes: listings caching is off, so every read asks the store for the object as it is now.
"""

from __future__ import annotations

import json

import fsspec

from graph_engine import store


def partition_count(uri: str) -> int:
    """`store.partition_count`, through a long-lived S3 client for s3:// URIs."""
    if not store.is_s3(uri):
        return store.partition_count(uri)
    fs = fsspec.filesystem("s3", endpoint_url=store.s3_endpoint(), use_listings_cache=False)
    try:
        meta = json.loads(fs.cat_file(f"{store.canonical_uri(uri).removeprefix('s3://')}/{store.META}"))
    except (OSError, ValueError):
        meta = None
    partitions = meta.get(store.PARTITIONS_FIELD) if isinstance(meta, dict) else None
    if isinstance(partitions, dict) and partitions:
        return len(partitions)
    # A missing or broken graph: the store's own read fails again and says what is wrong.
    return store.partition_count(uri)
