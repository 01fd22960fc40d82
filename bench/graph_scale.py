"""Conversion at scale: Parquet tables -> graph store, against reading them and writing raw arrays.

    nice -n 10 .venv/bin/python bench/graph_scale.py --nodes 1000000 --degree 8 --dim 32 --partitions 4

For each size: writes a synthetic graph as sharded Parquet with sparse 64-bit ids (random edges,
average out-degree `--degree`, `--dim` float32 features), then, side by side in one run:
- baseline: read every shard's columns and write them as raw arrays (the floor any converter pays),
  in a fresh process like the conversion;
- conversion: `python -m graph_engine.convert` (a child process tree: the CLI and its workers);
- server load: 2 graph-engine servers, seconds to SERVING and RSS (the larger of the two);
- training: GraphSAGE samples/s through the 2 servers and in-process (MemoryGraph), interleaved.
With `--weighted`, the same edges are converted a second time with a `weight` column (log-normal,
a tenth of them 0), so the alias tables of unequal weights are built: seconds and peak side by side.
`--rounds N` repeats the baseline and the conversions, alternated, and reports their medians (peaks:
the largest); `--convert-only` skips the servers and training.
Peak memory is the largest sum of RSS over the whole process tree, sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from graph_engine import health  # noqa: E402
from tests.test_graph_server import free_port  # noqa: E402


def write_tables(root: Path, nodes: int, degree: int, dim: int, shards: int, weighted: bool,
                 seed: int = 0) -> None:
    """nodes/ and edges/ shards; with `weighted`, edges_weighted/ too: the same edges with weights."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(1 << 40, nodes, replace=False).astype(np.int64) * 1000 + 7
    (root / "nodes").mkdir(parents=True)
    (root / "edges").mkdir()
    (root / "edges_weighted").mkdir()
    splits = np.array(["train", "val", "test", None], dtype=object)
    for k, rows in enumerate(np.array_split(np.arange(nodes), shards)):
        n = len(rows)
        features = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * dim, np.float32)), dim)
        split = splits[np.minimum(rng.integers(0, 10, n), 3)]
        pq.write_table(pa.table({"id": ids[rows], "features": features, "label": rng.integers(0, 8, n),
                                 "split": pa.array(list(split), pa.string())}),
                       root / "nodes" / f"part-{k:05d}.parquet")
    edges = nodes * degree
    for k, count in enumerate(np.diff(np.linspace(0, edges, shards * 2 + 1).astype(np.int64))):
        src, dst = ids[rng.integers(0, nodes, count)], ids[rng.integers(0, nodes, count)]
        table = pa.table({"src": src, "dst": dst})
        pq.write_table(table, root / "edges" / f"part-{k:05d}.parquet")
        if weighted:
            weight = (rng.lognormal(0, 1, count) * (rng.random(count) > 0.1)).astype(np.float32)
            pq.write_table(table.append_column("weight", pa.array(weight)),
                           root / "edges_weighted" / f"part-{k:05d}.parquet")


def baseline(root: Path, out: Path) -> float:
    """Seconds of bench/raw_floor.py in a fresh process, as the conversion runs: its interpreter start,
    imports and first touch of memory count alike on both sides (an in-process floor repeated over
    rounds reuses warm memory that no fresh process has)."""
    floor = Path(__file__).with_name("raw_floor.py")
    seconds, _, _ = run_tree([sys.executable, str(floor), str(root), str(out)])
    return seconds


def run_tree(cmd: list[str], ready: str | None = None) -> tuple[float, int, subprocess.Popen[bytes]]:
    """Run `cmd`; (seconds, peak RSS of its process tree in bytes, process). With `ready` (host:port),
    stop measuring when it answers SERVING and leave it running."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    last_check = 0.0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        if ready and time.perf_counter() - last_check > 0.2:
            last_check = time.perf_counter()
            if health.check(ready, timeout=0.2):
                break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if not ready and proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return seconds, peak, proc


def convert(tables: Path, edges: str, partitions: int, out: Path) -> tuple[float, int]:
    seconds, peak, _ = run_tree(
        [sys.executable, "-m", "graph_engine.convert", "--nodes", str(tables / "nodes"), "--edges",
         str(tables / edges), "--partitions", str(partitions), "--out", str(out)])
    return seconds, peak


def measure(nodes: int, degree: int, dim: int, partitions: int, work: Path, weighted: bool,
            convert_only: bool, rounds: int) -> dict[str, float]:
    shards = max(2, nodes // 250_000)
    tables = work / "tables"
    write_tables(tables, nodes, degree, dim, shards, weighted)
    size = sum(f.stat().st_size for f in tables.rglob("*.parquet") if f.parent.name != "edges_weighted")
    # Rounds alternate the baseline and the conversions, so a noisy neighbour hits them alike; medians.
    runs: dict[str, list[tuple[float, int]]] = {"baseline": [], "edges": [], "edges_weighted": []}
    for _ in range(rounds):
        shutil.rmtree(work / "raw", ignore_errors=True)
        runs["baseline"].append((baseline(tables, work / "raw"), 0))
        for kind in ("edges", "edges_weighted") if weighted else ("edges",):
            out = work / ("graph" if kind == "edges" else "graph_weighted")
            shutil.rmtree(out, ignore_errors=True)
            runs[kind].append(convert(tables, kind, partitions, out))
    base, convert_s = (float(np.median([s for s, _ in runs[k]])) for k in ("baseline", "edges"))
    convert_rss = max(peak for _, peak in runs["edges"])
    graph_bytes = sum(f.stat().st_size for f in (work / "graph").iterdir())
    edges = nodes * degree
    row = {"nodes": nodes, "edges": edges, "dim": dim, "partitions": partitions, "rounds": rounds,
           "parquet_mb": size / 2**20, "graph_mb": graph_bytes / 2**20, "baseline_s": base,
           "convert_s": convert_s, "ratio": convert_s / base, "edges_per_s": edges / convert_s,
           "convert_peak_mb": convert_rss / 2**20}
    if weighted:
        weighted_s = float(np.median([s for s, _ in runs["edges_weighted"]]))
        row.update({"convert_weighted_s": weighted_s, "weighted_vs_unweighted": weighted_s / convert_s,
                    "convert_weighted_peak_mb": max(peak for _, peak in runs["edges_weighted"]) / 2**20})
    if convert_only:
        return row
    servers, loads = [], []
    try:
        for ordinal in range(2):
            port = free_port()
            load_s, _, server = run_tree(
                [sys.executable, "-m", "graph_engine.server", "--data-dir", str(work / "graph"), "--port",
                 str(port), "--ordinal", str(ordinal), "--replicas", "2", "--partitions", str(partitions),
                 "--host", "127.0.0.1"], ready=f"127.0.0.1:{port}")
            servers.append((server, f"127.0.0.1:{port}"))
            loads.append((load_s, psutil.Process(server.pid).memory_info().rss))
        training = samples_per_second(str(work / "graph"), partitions, [e for _, e in servers])
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=60)
    return {**row, "server_load_s": max(s for s, _ in loads),
            "server_rss_mb": max(r for _, r in loads) / 2**20, **training}


def samples_per_second(uri: str, partitions: int, endpoints: list[str],
                       train: int = 4096) -> dict[str, float]:
    """GraphSAGE training samples/s over `train` training nodes, in-process and through the 2 servers,
    interleaved (in-process, service, in-process, service) after a warm-up of each."""
    from deepgnn.graph_engine.snark.client import MemoryGraph

    from workflows.graph_client import open_service
    from workflows.train import GraphInfo, TrainConfig, fit

    info = GraphInfo.read(uri)
    info.__dict__["train_ids"] = info.train_ids[:train]  # the same nodes for both handles
    handles = {"in_process": (MemoryGraph(uri, list(range(partitions))), []),
               "service": (open_service(endpoints), endpoints)}
    rates: dict[str, list[float]] = {name: [] for name in handles}
    for round_ in range(3):
        for name, (graph, used) in handles.items():
            report = fit(graph, info, TrainConfig(epochs=1, seed=round_), used, progress=False).report
            if round_:  # round 0 is the warm-up
                rates[name].append(report.samples_per_second)
    in_process, service = (float(np.median(rates[n])) for n in ("in_process", "service"))
    return {"train_samples_per_s_in_process": in_process, "train_samples_per_s_2_servers": service,
            "service_vs_in_process": service / in_process}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--weighted", action="store_true", help="also convert the edges with unequal weights")
    parser.add_argument("--convert-only", action="store_true", help="skip the servers and training")
    parser.add_argument("--rounds", type=int, default=1, help="baseline and conversions, alternated; medians")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here too")
    ns = parser.parse_args()
    rows = []
    for nodes in ns.nodes:
        work = Path(tempfile.mkdtemp(prefix="graph-scale-"))
        try:
            row = measure(nodes, ns.degree, ns.dim, ns.partitions, work, ns.weighted, ns.convert_only,
                          ns.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if ns.out:
        ns.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
