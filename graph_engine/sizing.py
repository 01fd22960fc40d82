"""A graph-engine server's resources from the graph it serves: memory and scratch from partition sizes.

The manifest (graphfleet.json) records every partition file's size, so a server's need is known
before anything starts: the bytes of the partitions it loads (`infra.contract.assign_partitions`) plus
the server process's own footprint. Calibrated against measured server RSS (tests/test_sizing.py
measures it on every run; bench/graph_scale.py records the RSS of a 1M-node server):
- a server holding a 1,000-node graph: 93 MiB RSS; the Python process and DeepGNN's library;
- RSS grows by 0.6-1.9x the bytes of the partitions it loads (0.6-0.8 right after loading, 1.34
  typically and once 1.84 once every node's features and neighbours were fetched and sampled:
  DeepGNN's node maps and sampling structures cost more than their files), so 2x leaves a margin.
"""

from __future__ import annotations

from typing import Any

from infra.contract import assign_partitions

MIB = 1 << 20
# The server process with an empty graph (measured 93 MiB) plus headroom for gRPC buffers under load.
SERVER_OVERHEAD = 160 * MIB
# Memory per byte of partition files loaded (measured 0.6-1.84).
BYTES_FACTOR = 2.0
# Scratch: an s3:// graph's partitions are downloaded there, plus room for logs and Python's caches.
SCRATCH_OVERHEAD = 256 * MIB


def partition_bytes(manifest: dict[str, Any]) -> dict[int, int]:
    """Bytes of each partition's files, from the manifest's `files` table."""
    sizes: dict[int, int] = {}
    for entry in manifest.get("files", {}).values():
        if "partition" in entry:
            sizes[entry["partition"]] = sizes.get(entry["partition"], 0) + int(entry["size"])
    return sizes


def server_bytes(manifest: dict[str, Any], replicas: int) -> list[int]:
    """Bytes of partition files each server (by ordinal) loads."""
    sizes = partition_bytes(manifest)
    partitions = int(manifest["partitions"])
    return [sum(sizes.get(p, 0) for p in mine) for mine in assign_partitions(replicas, partitions)]


def _mib(value: float) -> int:
    return -(-int(value) // MIB)


def memory_mib(manifest: dict[str, Any], replicas: int) -> int:
    """The memory request (MiB) that holds the largest server's partitions."""
    return _mib(SERVER_OVERHEAD + BYTES_FACTOR * max(server_bytes(manifest, replicas)))


def scratch_mib(manifest: dict[str, Any], replicas: int) -> int:
    """The scratch volume (MiB) that holds the largest server's downloaded partitions."""
    return _mib(SCRATCH_OVERHEAD + max(server_bytes(manifest, replicas)))


def has_sizes(manifest: dict[str, Any]) -> bool:
    """Whether the manifest records partition file sizes (graphs converted since they were recorded)."""
    return bool(partition_bytes(manifest))
