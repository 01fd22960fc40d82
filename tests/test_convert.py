"""Conversion to DeepGNN's binary format, read back by DeepGNN itself; the store readers; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from deepgnn.graph_engine.snark.client import MemoryGraph

from graph_engine import binary
from graph_engine.convert import convert
from graph_engine.datasets import Graph, load, synthetic
from graph_engine.shuffle import partition_of
from graph_engine.store import partition_count, read_info, read_meta, read_split
from tests.s3_server import moto_s3
from tests.shared_data import PLANETOID_DIR


@pytest.fixture(scope="module")
def cora() -> Graph:
    return load("cora", PLANETOID_DIR)


@pytest.fixture(scope="module")
def small() -> Graph:
    return synthetic(num_nodes=300, num_classes=3, feature_dim=8)


def _open(uri: str, partitions: list[int]) -> MemoryGraph:
    return MemoryGraph(uri, [(uri, p) for p in partitions])


def assert_same_graph(uri: str, graph: Graph, partitions: int) -> None:
    """DeepGNN, loading every partition, returns exactly the graph's features, labels, split and edges."""
    store = _open(uri, list(range(partitions)))
    ids = np.arange(graph.num_nodes, dtype=np.int64)
    features = store.node_features(ids, np.array([[0, graph.feature_dim]]), np.float32)
    labels = store.node_features(ids, np.array([[1, 1]]), np.float32)[:, 0]
    assert np.array_equal(features, graph.features)
    assert np.array_equal(labels, graph.labels.astype(np.float32))
    assert np.array_equal(store.node_types(ids, -1), graph.split_types())
    neighbours, _, types, counts = store.neighbors(ids, [0])
    assert set(types.tolist()) == {0}
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    got = {(int(u), int(v)) for u in ids for v in neighbours[offsets[u]:offsets[u + 1]]}
    expected = {(int(u), int(v)) for u, v in graph.edges} | {(int(v), int(u)) for u, v in graph.edges}
    assert got == expected
    assert int(counts.sum()) == 2 * len(graph.edges)


@pytest.mark.parametrize("partitions", [1, 2])
def test_cora_round_trip(cora: Graph, tmp_path: Path, partitions: int) -> None:
    uri = convert(cora, str(tmp_path / "cora"), partitions)
    assert uri == str(tmp_path / "cora")
    assert_same_graph(uri, cora, partitions)
    assert partition_count(uri) == partitions
    assert read_meta(uri)["node_count"] == 2708
    info = read_info(uri)
    assert {k: info[k] for k in ("dataset", "num_nodes", "feature_dim", "num_classes", "partitions")} == {
        "dataset": "cora", "num_nodes": 2708, "feature_dim": 1433, "num_classes": 7, "partitions": partitions}
    for split in ("train", "val", "test"):
        assert np.array_equal(read_split(uri, split), getattr(cora, f"{split}_ids"))
        assert info["splits"][split]["count"] == len(getattr(cora, f"{split}_ids"))
    assert not [p for p in tmp_path.iterdir() if p.name != "cora"], "scratch folder left behind"


def test_nodes_land_by_id_hash_so_each_server_holds_its_share(small: Graph, tmp_path: Path) -> None:
    uri = convert(small, f"file://{tmp_path}/g", 3)
    ids = np.arange(small.num_nodes)
    for partition in range(3):
        found = _open(uri, [partition]).node_types(ids, -1) != -1
        assert np.array_equal(np.flatnonzero(found), ids[partition_of(ids, 3) == partition])
        assert 60 <= found.sum() <= 140, "the hash spreads nodes evenly"


def test_s3_round_trip(small: Graph) -> None:
    with moto_s3(buckets=["graphs"], set_env=True):
        uri = convert(small, "s3://graphs/runs/small/", 2)
        assert uri == "s3://graphs/runs/small"
        assert partition_count(uri) == 2
        assert read_info(uri)["num_nodes"] == small.num_nodes
        assert_same_graph(uri, small, 2)


def test_s3_missing_bucket_named_before_any_work(small: Graph) -> None:
    with moto_s3(set_env=True) as endpoint:
        with pytest.raises(FileNotFoundError) as err:
            convert(small, "s3://nobucket/g", 1)
    assert str(err.value) == (f"convert: bucket 'nobucket' does not exist at the S3 endpoint ({endpoint}); "
                              "create it first or check AWS_ENDPOINT_URL")


@pytest.mark.parametrize("partitions", [0, -2, 1.5, True])
def test_partitions_must_be_positive_integer(small: Graph, tmp_path: Path, partitions: object) -> None:
    with pytest.raises(ValueError) as err:
        convert(small, str(tmp_path / "g"), partitions)  # type: ignore[arg-type]
    assert str(err.value) == f"convert: partitions must be an integer >= 1, got {partitions!r}"
    assert not (tmp_path / "g").exists()


def test_more_partitions_than_nodes(tmp_path: Path) -> None:
    tiny = synthetic(num_nodes=8, num_classes=2)
    with pytest.raises(ValueError) as err:
        convert(tiny, str(tmp_path / "g"), 9)
    assert str(err.value) == ("convert: partitions (9) exceeds the graph's 8 nodes; every partition needs a "
                              "node: use at most 8")


def test_existing_graph_kept_unless_overwrite(small: Graph, tmp_path: Path) -> None:
    target = tmp_path / "g"
    convert(small, str(target), 2)
    with pytest.raises(FileExistsError) as err:
        convert(small, str(target), 3)
    assert str(err.value) == (f"convert: {target} already holds a converted graph; choose an empty location "
                              "or pass overwrite=True")
    assert partition_count(str(target)) == 2
    convert(small, str(target), 3, overwrite=True)
    assert partition_count(str(target)) == 3
    assert list(target.glob("node_features_2_*")), "the third partition is written"


def test_folder_of_other_files_is_never_overwritten(small: Graph, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError) as err:
        convert(small, str(tmp_path), 1, overwrite=True)
    assert str(err.value) == (f"convert: {tmp_path} holds files and is not a converted graph; "
                              "choose an empty location")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.timeout(60)
def test_writer_failure_raises_and_leaves_nothing(small: Graph, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = binary.PartitionWriter.close

    def failing(writer: binary.PartitionWriter) -> object:
        if writer.p == 1:
            raise OSError("disk full")
        return real(writer)

    monkeypatch.setattr(binary.PartitionWriter, "close", failing)
    with pytest.raises(OSError, match="disk full"):
        convert(small, str(tmp_path / "g"), 2)
    assert list(tmp_path.iterdir()) == []


def test_store_readers_explain_a_missing_graph(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        read_meta(str(tmp_path))
    assert str(err.value) == (f"no meta.json at {tmp_path}: is this a converted graph? Write one with "
                              "graph_engine.convert.convert(graph, uri, partitions)")
    (tmp_path / "meta.json").write_text(json.dumps({"binary_data_version": "v2"}))
    with pytest.raises(ValueError) as err2:
        partition_count(str(tmp_path))
    assert str(err2.value) == (f"{tmp_path}/meta.json has no 'partitions' table: not written by DeepGNN's "
                               "converter; reconvert the graph")
    with pytest.raises(FileNotFoundError, match=r"^no graphfleet.json at .*: graphs converted by graph_"):
        read_info(str(tmp_path))


def test_unsupported_scheme(small: Graph) -> None:
    with pytest.raises(ValueError) as err:
        convert(small, "gs://bucket/g", 1)
    assert str(err.value) == ("graph URI 'gs://bucket/g': expected s3://bucket/prefix, file:///path "
                              "or a local path")
