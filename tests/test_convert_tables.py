"""Parquet tables in, graph store out: byte-identical to DeepGNN's own converter, served by graph-engine
servers, every bad input named by file, column and rows with nothing published, CLI and S3."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deepgnn.graph_engine.snark.client import MemoryGraph
from deepgnn.graph_engine.snark.convert import MultiWorkersConverter
from deepgnn.graph_engine.snark.decoders import Decoder
from deepgnn.graph_engine.snark.dispatcher import QueueDispatcher

from graph_engine import health, shuffle
from graph_engine.convert import convert_tables
from graph_engine.shuffle import partition_of
from graph_engine.store import INFO, read_info, read_split
from graph_engine.tables import TableError
from tests.s3_server import moto_s3, s3_env
from tests.test_graph_server import free_port, start

N, DIM, E = 240, 6, 1500
SPLIT_NAMES = np.array(["train", "val", "test", None], dtype=object)


class Tables:
    """A small graph with sparse 64-bit ids as Spark would write it: 2 node shards, 2 edge shards."""

    def __init__(self, seed: int = 0, weights: str | None = "uniform", edges: int = E) -> None:
        """`weights`: uniform in [0, 1), "skewed" (a few nodes hold most edges; heavy-tailed weights, a
        third of them 0), "equal", or None (no weight column)."""
        rng = np.random.default_rng(seed)
        self.ids = rng.choice(1 << 50, N, replace=False).astype(np.int64) * 1000  # a common stride
        self.features = rng.normal(size=(N, DIM)).astype(np.float32)
        self.labels = rng.integers(0, 3, N)
        self.split = SPLIT_NAMES[rng.integers(0, 4, N)]
        self.labels[(self.split == None) & (rng.random(N) < 0.5)] = -1  # noqa: E711 - object array
        hubs = np.minimum(rng.zipf(1.5, edges) - 1, N - 1)  # node k has about k**-1.5 of the edges
        self.src = self.ids[hubs if weights == "skewed" else rng.integers(0, N, edges)]
        self.dst = self.ids[rng.integers(0, N, edges)]
        draws = {"uniform": lambda: rng.random(edges),
                 "skewed": lambda: rng.lognormal(0, 2, edges) * (rng.random(edges) > 0.3),
                 "equal": lambda: np.full(edges, 2.5)}
        self.weight = draws[weights]().astype(np.float32) if weights else None

    def node_table(self, rows: slice) -> pa.Table:
        n = len(self.ids[rows])
        features = pa.FixedSizeListArray.from_arrays(pa.array(self.features[rows].ravel()), DIM)
        return pa.table({"id": self.ids[rows], "features": features, "label": pa.array(self.labels[rows]),
                         "split": pa.array(list(self.split[rows]), pa.string())}).slice(0, n)

    def edge_table(self, rows: slice) -> pa.Table:
        columns: dict[str, Any] = {"src": self.src[rows], "dst": self.dst[rows]}
        if self.weight is not None:
            columns["weight"] = self.weight[rows]
        return pa.table(columns)

    def write(self, root: Path) -> tuple[Path, Path]:
        (root / "nodes").mkdir(parents=True)
        (root / "edges").mkdir()
        for k, rows in enumerate((slice(0, N // 3), slice(N // 3, N))):
            pq.write_table(self.node_table(rows), root / "nodes" / f"part-{k:05d}.parquet", row_group_size=50)
        for k, rows in enumerate((slice(0, len(self.src) // 2), slice(len(self.src) // 2, None))):
            pq.write_table(self.edge_table(rows), root / "edges" / f"part-{k:05d}.parquet")
        (root / "nodes" / "_SUCCESS").write_text("")
        return root / "nodes", root / "edges"


class _Reference(Decoder):
    """DeepGNN decoder over the same rows: a node, then its edges sorted by dst (ties in input order)."""

    def __init__(self, t: Tables) -> None:
        super().__init__()
        self.t = t
        self.types = np.select([t.split == "train", t.split == "val", t.split == "test"], [0, 1, 2], 3)
        order = np.lexsort((t.dst, t.src))
        self.src, self.dst = t.src[order], t.dst[order]
        self.weight = (t.weight if t.weight is not None else np.ones(len(t.src), np.float32))[order]

    def decode(self, line: str) -> Iterator[tuple[Any, ...]]:
        i = int(line)
        node = int(self.t.ids[i])
        yield (node, -1, int(self.types[i]), 1.0, None, None,
               [self.t.features[i], np.array([self.t.labels[i]], np.float32)])
        lo, hi = np.searchsorted(self.src, [node, node + 1])
        for k in range(lo, hi):
            yield node, int(self.dst[k]), 0, float(self.weight[k]), None, None, []


@pytest.fixture(params=[None, 4096], ids=["whole", "ranges"])
def ranges(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions built whole, or in ranges of ids of about 50 nodes plus edges (4 KB of working set),
    read 50 rows at a time: what a partition bigger than shuffle.BUCKET_BYTES does."""
    if request.param:
        monkeypatch.setattr(shuffle, "BUCKET_BYTES", request.param)
        monkeypatch.setattr(shuffle, "_PIECE", 50)


@pytest.mark.parametrize(("weights", "count"), [("uniform", E), ("skewed", 20 * E), ("equal", E), (None, E)])
def test_partitions_are_byte_identical_to_deepgnns_converter(tmp_path: Path, weights: str | None,
                                                             count: int, ranges: None) -> None:
    t = Tables(weights=weights, edges=count)
    nodes, edges = t.write(tmp_path / "in")
    out = Path(convert_tables(str(nodes), str(edges), str(tmp_path / "ours"), 3, workers=2))

    reference = tmp_path / "deepgnn"
    reference.mkdir()
    decoder = _Reference(t)
    # DeepGNN's converter, fed the nodes in id order (ours writes a partition's nodes in id order),
    # with its lines sent to the partitions our hash picks (processes: its
    # QueueDispatcher cannot run on threads, it closes the queues the threads read).
    dispatcher = QueueDispatcher(str(reference), 3, lambda line: int(partition_of(t.ids[[int(line)]], 3)[0]),
                                 decoder)
    MultiWorkersConverter(graph_path=str(reference), output_dir=str(reference), decoder=decoder,
                          partition_count=3, dispatcher=dispatcher,
                          file_iterator=[[str(i) for i in np.argsort(t.ids)]]).convert()

    theirs = sorted(p.name for p in reference.iterdir())
    ours = sorted(p.name for p in out.iterdir() if p.name != INFO and not p.name.endswith(".ids"))
    assert ours == theirs
    different = [name for name in theirs if (reference / name).read_bytes() != (out / name).read_bytes()]
    assert different == []
    manifest = read_info(str(out))
    assert set(manifest["files"]) == set(theirs) - {"meta.json"} | {"train.ids", "val.ids", "test.ids"}
    for name in ("train", "val", "test"):  # merged from the partitions' sorted lists
        assert read_split(str(out), name).tolist() == sorted(t.ids[t.split == name].tolist())


def test_servers_load_it_and_answer_features_neighbours_and_splits(tmp_path: Path) -> None:
    from deepgnn.graph_engine.snark.client import DistributedGraph

    t = Tables(seed=1)
    nodes, edges = t.write(tmp_path / "in")
    uri = convert_tables(str(nodes), str(edges), str(tmp_path / "g"), 2, symmetrize=True, workers=1)
    ports = [free_port(), free_port()]
    procs = [start(Path(uri), port, i, 2) for i, port in enumerate(ports)]
    try:
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        health.wait_ready(endpoints, timeout=60)
        client = DistributedGraph(endpoints)
        try:
            got = client.node_features(t.ids, np.array([[0, DIM], [1, 1]]), np.float32)
            assert np.array_equal(got[:, :DIM], t.features)
            assert np.array_equal(got[:, DIM], t.labels.astype(np.float32))
            neighbours, weights, _, counts = client.neighbors(t.ids, [0])
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            expected: dict[int, list[tuple[int, float]]] = {}
            for s, d, w in zip(t.src, t.dst, t.weight, strict=True):  # type: ignore[arg-type]
                expected.setdefault(int(s), []).append((int(d), float(w)))
                expected.setdefault(int(d), []).append((int(s), float(w)))
            for k, node in enumerate(t.ids):
                got_edges = sorted(zip(neighbours[offsets[k]:offsets[k + 1]].tolist(),
                                       weights[offsets[k]:offsets[k + 1]].tolist(), strict=True))
                want = sorted(expected.get(int(node), []))
                assert [d for d, _ in got_edges] == [d for d, _ in want]
                # The server hands weights back as differences of its float32 running sums per node:
                # equal up to float32 rounding of the node's total weight.
                assert np.allclose([w for _, w in got_edges], [w for _, w in want], rtol=0, atol=1e-5)
            sampled, _, _ = client.weighted_sample_neighbors(t.ids, [0], 5)
            known = {int(n): {d for d, _ in expected.get(int(n), [])} for n in t.ids}
            assert all(int(s) in known[int(n)] or (int(s) == -1 and not known[int(n)])
                       for n, row in zip(t.ids, sampled, strict=True) for s in row)
        finally:
            client.reset()
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)
    for split, code in (("train", "train"), ("val", "val"), ("test", "test")):
        assert np.array_equal(read_split(uri, split), np.sort(t.ids[t.split == code]))
    assert read_info(uri)["num_edges"] == 2 * E


def _bad(tmp_path: Path, nodes: pa.Table | None = None, edges: pa.Table | None = None) -> tuple[str, Path]:
    t = Tables(weights=None)
    nodes_dir, edges_dir = t.write(tmp_path / "in")
    if nodes is not None:
        pq.write_table(nodes, nodes_dir / "part-00001.parquet")
    if edges is not None:
        pq.write_table(edges, edges_dir / "part-00001.parquet")
    out = tmp_path / "out"
    with pytest.raises(TableError) as err:
        convert_tables(str(nodes_dir), str(edges_dir), str(out), 2, workers=2)
    assert not out.exists(), "nothing is published after bad input"
    assert [p.name for p in tmp_path.iterdir()] == ["in"], "no scratch left behind"
    return str(err.value), nodes_dir


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    t = Tables()
    message, nodes = _bad(tmp_path, nodes=t.node_table(slice(0, 10)).drop_columns(["features"]))
    assert message == (f"{nodes}/part-00001.parquet: missing column 'features' (a list of float32); "
                       "the columns are ['id', 'label', 'split']")


def test_wrong_type_names_file_and_column(tmp_path: Path) -> None:
    t = Tables()
    table = t.node_table(slice(0, 10))
    table = table.set_column(0, "id", pa.array([str(i) for i in t.ids[:10]]))
    message, nodes = _bad(tmp_path, nodes=table)
    assert message == f"{nodes}/part-00001.parquet: column 'id' has type string; expected int64 node ids"


def test_ragged_features_name_the_row(tmp_path: Path) -> None:
    t = Tables()
    rows = [list(map(float, f)) for f in t.features[:120]]
    rows[117] = rows[117][:4]
    table = t.node_table(slice(0, 120)).set_column(1, "features", pa.array(rows, pa.list_(pa.float32())))
    message, nodes = _bad(tmp_path, nodes=table)
    assert message == (f"{nodes}/part-00001.parquet: column 'features' has 4 values at row 117, 6 before it; "
                       "every node needs the same feature length (ragged features)")


def test_unknown_edge_id_names_file_column_and_row(tmp_path: Path, ranges: None) -> None:
    t = Tables()
    dst = t.dst[:300].copy()
    dst[211] = 12345
    message, _ = _bad(tmp_path, edges=pa.table({"src": t.src[:300], "dst": dst}))
    assert message == (f"an edge's dst 12345 is not a node id: column 'dst' at "
                       f"{tmp_path}/in/edges/part-00001.parquet row 211")


def test_duplicate_node_ids_name_both_rows(tmp_path: Path, ranges: None) -> None:
    t = Tables()
    table = t.node_table(slice(N // 3, N))
    ids = t.ids[N // 3:].copy()
    ids[33] = t.ids[5]
    message, nodes = _bad(tmp_path, nodes=table.set_column(0, "id", pa.array(ids)))
    assert message == (f"duplicate node id {t.ids[5]}: column 'id' at {nodes}/part-00000.parquet row 5; "
                       f"{nodes}/part-00001.parquet row 33")


def test_split_node_without_label_names_the_row(tmp_path: Path) -> None:
    t = Tables()
    table = t.node_table(slice(0, 20))
    labels = t.labels[:20].copy()
    split = list(t.split[:20])
    split[7], labels[7] = "val", -1
    table = table.set_column(2, "label", pa.array(labels))
    table = table.set_column(3, "split", pa.array(split, pa.string()))
    message, nodes = _bad(tmp_path, nodes=table)
    assert message == (f"{nodes}/part-00001.parquet: row 7 is in split 'val' but its 'label' is null or -1; "
                       "a train/val/test node needs a label")


def test_cli_converts_and_reports_bad_input(tmp_path: Path) -> None:
    nodes, edges = Tables().write(tmp_path / "in")
    run = [sys.executable, "-m", "graph_engine.convert", "--nodes", str(nodes), "--edges", str(edges),
           "--partitions", "2", "--workers", "1"]
    ok = subprocess.run([*run, "--out", str(tmp_path / "g")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "g")
    assert read_info(str(tmp_path / "g"))["num_nodes"] == N
    bad = subprocess.run([*run, "--out", str(tmp_path / "h"), "--nodes", str(edges)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"convert: {edges}/part-00000.parquet: missing column 'id' (int64 node "
                                  "ids); the columns are ['src', 'dst', 'weight']; nothing was written at "
                                  f"{tmp_path}/h")
    assert not (tmp_path / "h").exists()


def test_s3_shards_in_s3_graph_out(tmp_path: Path) -> None:
    t = Tables()
    nodes, edges = t.write(tmp_path / "in")
    with moto_s3(buckets=["lake", "graphs"], set_env=True) as endpoint:
        subprocess.run(["true"], env=s3_env(endpoint), check=True)
        from graph_engine.store import filesystem

        fs, _ = filesystem("s3://lake")
        fs.put(str(nodes), "lake/spark/nodes", recursive=True)
        fs.put(str(edges), "lake/spark/edges", recursive=True)
        uri = convert_tables("s3://lake/spark/nodes", "s3://lake/spark/edges", "s3://graphs/g", 2, workers=2)
        assert read_info(uri)["num_nodes"] == N
        local = tmp_path / "copy"
        fs.get("graphs/g", str(local), recursive=True)
    graph = MemoryGraph(str(local), [(str(local), 0), (str(local), 1)])
    got = graph.node_features(t.ids, np.array([[0, DIM]]), np.float32)
    assert np.array_equal(got, t.features)
