"""Parquet tables -> graph store on the cluster: the conversion's stages as Flyte map tasks.

    pyflyte run workflows/convert_graph.py convert_graph --nodes s3://lake/g/nodes \\
        --edges s3://lake/g/edges --out s3://graphs/g --partitions 256 --shards_per_pod 8

The stages of graph_engine/shuffle.py, each pod reading only what it needs from S3:
1. plan: list the shards, refuse an occupied `--out`;
2. scatter (map task, one pod per group of shards): read its shards, write per-partition spill
   files under a scratch prefix beside `--out`;
3. build (map task, one pod per group of partitions): fetch only its partitions' spill files,
   check and write the partitions straight to `--out`;
4. finish: split files, manifest, meta.json last (a reader that finds meta.json finds every file),
   then the scratch prefix is removed.
No pod holds more than its shards' batch or its partitions, so a graph no single machine can
convert converts on the cluster. Until meta.json is written the graph does not exist for readers
(servers and the connector read meta.json first).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from flytekit import map_task, task, workflow

from graph_engine import shuffle, tables
from graph_engine.convert import check_s3_target, located, summarize, upload
from graph_engine.store import canonical_uri, filesystem, is_s3


def _groups(items: int, per_group: int) -> list[list[int]]:
    return [list(range(a, min(a + per_group, items))) for a in range(0, items, per_group)]


@task
def plan(nodes: str, edges: str, out: str, partitions: int, shards_per_pod: int,
         partitions_per_pod: int, symmetrize: bool) -> list[str]:
    """The scatter jobs (JSON), one per group of shards; refuses a target that is not s3:// or occupied."""
    uri = canonical_uri(out)
    if not is_s3(uri):
        raise ValueError(f"out: the cluster conversion writes to s3://bucket/prefix, got {out!r}; "
                         "convert locally with python -m graph_engine.convert")
    if partitions < 1 or shards_per_pod < 1 or partitions_per_pod < 1:
        raise ValueError("partitions, shards_per_pod and partitions_per_pod must be >= 1")
    check_s3_target(uri, overwrite=False)
    node_files, edge_files = tables.shards(nodes), tables.shards(edges)
    common = {"out": uri, "spill": f"{uri}.spill-{uuid.uuid4().hex[:8]}", "partitions": partitions,
              "partitions_per_pod": partitions_per_pod, "node_files": node_files, "edge_files": edge_files,
              "symmetrize": symmetrize}
    jobs = [{**common, "kind": "nodes", "shards": g} for g in _groups(len(node_files), shards_per_pod)]
    jobs += [{**common, "kind": "edges", "shards": g} for g in _groups(len(edge_files), shards_per_pod)]
    return [json.dumps(j) for j in jobs]


def _put(local: Path, uri: str) -> None:
    """Upload every file under `local` to the same relative paths under `uri`."""
    fs, path = filesystem(uri)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    if files:
        fs.put([str(p) for p in files], [f"{path}/{p.relative_to(local)}" for p in files])


def _get(uri: str, prefixes: list[str], local: Path) -> None:
    """Download the files under `uri`/<prefix> for each prefix into `local`, keeping relative paths."""
    fs, path = filesystem(uri)
    for prefix in prefixes:
        remote = f"{path}/{prefix}"
        if not fs.exists(remote):
            continue
        for name in fs.find(remote):
            target = local / name[len(path) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(target))


@task
def scatter(job: str) -> str:
    """Spill this group's shards to the scratch prefix; its reports (JSON)."""
    spec = json.loads(job)
    reports = []
    with tempfile.TemporaryDirectory(prefix="graphfleet-scatter-") as tmp:
        spill = Path(tmp)
        for k in spec["shards"]:
            if spec["kind"] == "nodes":
                reports.append(shuffle.scatter_nodes(tables.read_nodes(spec["node_files"][k]), k,
                                                     spec["partitions"], spill))
            else:
                reports.append(shuffle.scatter_edges(tables.read_edges(spec["edge_files"][k]), k,
                                                     spec["partitions"], spill, spec["symmetrize"]))
        _put(spill, spec["spill"])
    return json.dumps({"kind": spec["kind"], "shards": spec["shards"], "reports": reports, "job": spec})


@task
def plan_builds(scattered: list[str]) -> list[str]:
    """The build jobs (JSON), one per group of partitions, once every shard is spilled."""
    done = [json.loads(s) for s in scattered]
    job = done[0]["job"]
    node_reports: dict[int, dict[str, Any]] = {}
    for d in done:
        if d["kind"] == "nodes":
            node_reports.update(zip(d["shards"], d["reports"], strict=True))
    ordered = [node_reports[k] for k in range(len(job["node_files"]))]
    nodes, dim, classes = summarize(ordered, job["node_files"], job["partitions"])
    info = {"num_nodes": nodes, "feature_dim": dim, "num_classes": max(classes, 1)}
    return [json.dumps({**job, "build": group, **info})
            for group in _groups(job["partitions"], job["partitions_per_pod"])]


@task
def build(job: str) -> str:
    """Fetch this group's spill files, write its partitions to `out`; their reports (JSON)."""
    spec = json.loads(job)
    reports = []
    with tempfile.TemporaryDirectory(prefix="graphfleet-build-") as tmp:
        spill, out = Path(tmp) / "spill", Path(tmp) / "out"
        out.mkdir()
        wanted = [f"{kind}/{p}" for p in spec["build"] for kind in ("nodes", "edges", "refs")]
        _get(spec["spill"], wanted, spill)
        for p in spec["build"]:
            try:
                reports.append(shuffle.build_partition(spill, p, spec["feature_dim"], out))
            except shuffle.IdError as err:
                raise located(err, spec["node_files"], spec["edge_files"]) from None
        _put(out, spec["out"])
        _put(spill / "splits", f"{spec['spill']}/splits")
    return json.dumps({"reports": reports, "job": spec})


@task
def finish(built: list[str], name: str) -> str:
    """Split files, manifest and meta.json (last) at `out`; the scratch prefix removed. The graph's URI."""
    done = [json.loads(b) for b in built]
    job = done[0]["job"]
    reports = [r for d in done for r in d["reports"]]
    with tempfile.TemporaryDirectory(prefix="graphfleet-finish-") as tmp:
        spill, out = Path(tmp) / "spill", Path(tmp) / "out"
        out.mkdir()
        _get(job["spill"], ["splits"], spill)
        info = {"dataset": name, "num_nodes": job["num_nodes"], "feature_dim": job["feature_dim"],
                "num_classes": job["num_classes"], "partitions": job["partitions"]}
        shuffle.finish(spill, out, reports, info)
        upload(out, job["out"])
    fs, spill_path = filesystem(job["spill"])
    fs.rm(spill_path, recursive=True)
    return str(job["out"])


@workflow
def convert_graph(nodes: str, edges: str, out: str, partitions: int, shards_per_pod: int = 4,
                  partitions_per_pod: int = 4, symmetrize: bool = False, name: str = "parquet") -> str:
    jobs = plan(nodes=nodes, edges=edges, out=out, partitions=partitions, shards_per_pod=shards_per_pod,
                partitions_per_pod=partitions_per_pod, symmetrize=symmetrize)
    scattered = map_task(scatter)(job=jobs)
    builds = plan_builds(scattered=scattered)
    built = map_task(build)(job=builds)
    return finish(built=built, name=name)

