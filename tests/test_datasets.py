"""Datasets: Planetoid loading (real Cora files, a Citeseer-shaped fixture) and the synthetic graph."""

from __future__ import annotations

import pickle
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from graph_engine.datasets import (
    Graph,
    canonical_edges,
    edge_homophily,
    load,
    load_planetoid,
    synthetic,
)
from tests.shared_data import PLANETOID_DIR


def _raw(name: str) -> Any:
    with open(PLANETOID_DIR / f"ind.cora.{name}", "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.load(f, encoding="latin1")


@pytest.fixture(scope="module")
def cora() -> Graph:
    return load("cora", PLANETOID_DIR)


def test_cora_shapes_and_standard_split(cora: Graph) -> None:
    assert cora.features.shape == (2708, 1433)
    assert cora.num_classes == 7
    assert (len(cora.train_ids), len(cora.val_ids), len(cora.test_ids)) == (140, 500, 1000)
    assert cora.train_ids.tolist() == list(range(140))
    assert cora.val_ids.tolist() == list(range(140, 640))
    assert np.bincount(cora.labels[cora.train_ids]).tolist() == [20] * 7
    # 5,278 undirected links: the 10,556 directed edges every Cora loader (PyG, DGL) reports.
    assert cora.edges.shape == (5278, 2)


def test_cora_test_rows_reordered_into_test_index(cora: Graph) -> None:
    test_index = [int(line) for line in (PLANETOID_DIR / "ind.cora.test.index").read_text().split()]
    assert test_index != sorted(test_index), "the fixture must exercise the reordering"
    tx = np.asarray(_raw("tx").todense(), dtype=np.float32)
    ty = _raw("ty")
    expected = tx / tx.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(cora.features[test_index], expected, rtol=1e-6)
    assert cora.labels[test_index].tolist() == ty.argmax(axis=1).tolist()
    assert cora.test_ids.tolist() == sorted(test_index)
    # Cora's known edge homophily (0.81) holds only when every test row sits at its own node.
    assert edge_homophily(cora) == pytest.approx(0.81, abs=0.005)


def test_cora_features_row_normalized(cora: Graph) -> None:
    np.testing.assert_allclose(cora.features.sum(axis=1), 1.0, rtol=1e-5)
    assert cora.features.dtype == np.float32


def _write_planetoid(folder: Path, name: str, parts: dict[str, object]) -> None:
    for part, value in parts.items():
        path = folder / f"ind.{name}.{part}"
        if part == "test.index":
            path.write_text("".join(f"{i}\n" for i in value))  # type: ignore[attr-defined]
        else:
            path.write_bytes(pickle.dumps(value, protocol=2))


def _citeseer_like(folder: Path) -> None:
    """9 nodes, 2 classes: allx rows 0..4 (train 0-1, val 2-4), test ids 8, 5, 7 (unsorted), node 6 a gap."""
    allx = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 0], [0, 1, 1]], dtype=np.float32)
    ally = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]])
    tx = np.array([[4, 0, 0], [0, 5, 0], [0, 0, 6]], dtype=np.float32)
    ty = np.array([[0, 1], [1, 0], [0, 1]])
    graph = defaultdict(list, {0: [1, 8], 1: [0, 2], 2: [1], 3: [4, 3], 4: [3], 5: [7], 6: [], 7: [5],
                               8: [0]})
    _write_planetoid(folder, "citeseer", {
        "x": sp.csr_matrix(allx[:2]), "y": ally[:2], "tx": sp.csr_matrix(tx), "ty": ty,
        "allx": sp.csr_matrix(allx), "ally": ally, "graph": graph, "test.index": [8, 5, 7]})


def test_citeseer_isolated_test_ids_get_zero_features_and_no_label(tmp_path: Path) -> None:
    _citeseer_like(tmp_path)
    g = load("citeseer", tmp_path)
    assert g.num_nodes == 9
    assert g.train_ids.tolist() == [0, 1]
    assert g.val_ids.tolist() == [2, 3, 4]
    assert g.test_ids.tolist() == [5, 7, 8]
    # Row i of tx belongs to node test.index[i]: 8 <- [4,0,0], 5 <- [0,5,0], 7 <- [0,0,6] (row-normalized).
    assert g.features[8].tolist() == [1, 0, 0]
    assert g.features[5].tolist() == [0, 1, 0]
    assert g.features[7].tolist() == [0, 0, 1]
    assert g.labels[[8, 5, 7]].tolist() == [1, 0, 1]
    assert g.features[6].tolist() == [0, 0, 0]
    assert g.labels[6] == -1
    assert g.split_types().tolist() == [0, 0, 1, 1, 1, 2, 3, 2, 2]
    # Self-loop 3-3 dropped, both-direction duplicates merged.
    assert g.edges.tolist() == [[0, 1], [0, 8], [1, 2], [3, 4], [5, 7]]


def test_planetoid_pickle_with_code_is_refused(tmp_path: Path) -> None:
    _citeseer_like(tmp_path)
    # A pickle that would run os.system("true") when loaded naively.
    (tmp_path / "ind.citeseer.graph").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match=r"^os.system is not a type Planetoid files hold"):
        load("citeseer", tmp_path)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError) as err:
        load("coraa", PLANETOID_DIR)
    assert str(err.value) == "unknown dataset 'coraa': expected one of cora, citeseer, pubmed, synthetic"


@pytest.mark.parametrize("data_dir", [None, ""])
def test_planetoid_without_data_dir(data_dir: str | None) -> None:
    with pytest.raises(ValueError) as err:
        load("pubmed", data_dir)
    assert str(err.value) == ("dataset 'pubmed' needs data_dir: the folder holding "
                              "ind.pubmed.{x,y,tx,ty,allx,ally,graph,test.index}")


def test_planetoid_data_dir_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load("cora", tmp_path / "nope")
    assert str(err.value) == (f"data_dir {tmp_path / 'nope'} is not a directory: point it at the folder "
                              "holding ind.cora.{x,y,tx,ty,allx,ally,graph,test.index}")


def test_planetoid_missing_files_named(tmp_path: Path) -> None:
    _citeseer_like(tmp_path)
    (tmp_path / "ind.citeseer.ty").unlink()
    (tmp_path / "ind.citeseer.graph").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_planetoid("citeseer", tmp_path)
    assert str(err.value) == (
        f"missing {tmp_path}/ind.citeseer.ty, {tmp_path}/ind.citeseer.graph: Planetoid dataset 'citeseer' "
        f"needs the files ind.citeseer.{{x,y,tx,ty,allx,ally,graph,test.index}} in {tmp_path}")


def test_empty_data_dir_for_planetoid(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^missing .*ind\.cora\.x, .*ind\.cora\.test\.index: "):
        load("cora", tmp_path)


def _nearest_centroid_accuracy(features: np.ndarray, g: Graph) -> float:
    train = g.train_ids
    centroids = np.stack([features[train][g.labels[train] == c].mean(axis=0) for c in range(g.num_classes)])
    distances = ((features[g.test_ids, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((distances.argmin(axis=1) == g.labels[g.test_ids]).mean())


def _neighbour_mean(features: np.ndarray, g: Graph) -> np.ndarray:
    n = g.num_nodes
    src = np.concatenate([g.edges[:, 0], g.edges[:, 1], np.arange(n)])
    dst = np.concatenate([g.edges[:, 1], g.edges[:, 0], np.arange(n)])
    adjacency = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    return (adjacency @ features) / np.asarray(adjacency.sum(axis=1))


def test_synthetic_is_learnable_from_structure_not_from_features_alone() -> None:
    g = synthetic()
    assert 1000 <= g.num_nodes <= 10_000
    chance = 1 / g.num_classes
    assert edge_homophily(g) > 0.7 > 3 * chance
    feature_only = _nearest_centroid_accuracy(g.features, g)
    with_neighbours = _nearest_centroid_accuracy(_neighbour_mean(_neighbour_mean(g.features, g), g), g)
    assert chance + 0.05 < feature_only < 0.6
    assert with_neighbours > feature_only + 0.3


def test_synthetic_planetoid_like_split() -> None:
    g = synthetic(num_nodes=3000, num_classes=5)
    assert np.bincount(g.labels[g.train_ids]).tolist() == [20] * 5
    assert (len(g.val_ids), len(g.test_ids)) == (500, 1000)
    small = synthetic(num_nodes=200, num_classes=4)
    per_class = np.bincount(small.labels[small.train_ids])
    assert per_class.min() == per_class.max() >= 1
    assert len(small.train_ids) + len(small.val_ids) + len(small.test_ids) <= 200
    assert len(small.val_ids) > 0 and len(small.test_ids) > len(small.val_ids)


def test_synthetic_deterministic_by_seed() -> None:
    a, b, c = (synthetic(num_nodes=400, seed=seed) for seed in (3, 3, 4))
    for field in ("features", "labels", "edges", "train_ids", "val_ids", "test_ids"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.edges, c.edges)
    assert not np.array_equal(a.features, c.features)


def test_synthetic_rejects_too_few_nodes() -> None:
    with pytest.raises(ValueError) as err:
        synthetic(num_nodes=10, num_classes=5)
    assert str(err.value) == ("synthetic: num_nodes must be >= 4 * num_classes (20) so every class has nodes "
                              "to train, validate and test on, got 10")


def test_graph_rejects_non_canonical_edges_and_overlapping_splits() -> None:
    g = synthetic(num_nodes=100, num_classes=2)
    fields = {f: getattr(g, f) for f in ("name", "features", "labels", "edges", "train_ids", "val_ids",
                                         "test_ids", "num_classes")}
    with pytest.raises(ValueError, match=r"^Graph.edges: must hold each undirected edge once"):
        Graph(**{**fields, "edges": g.edges[:, ::-1].copy()})
    with pytest.raises(ValueError, match=r"^Graph.val_ids: overlaps an earlier split at node "):
        Graph(**{**fields, "val_ids": np.union1d(g.val_ids, g.train_ids[:1])})
    with pytest.raises(ValueError, match=r"^Graph.features: expected a float32 array of 2 dims, got float64"):
        Graph(**{**fields, "features": g.features.astype(np.float64)})
    assert np.array_equal(canonical_edges(np.array([[2, 1], [1, 2], [3, 3], [0, 1]]), 4), [[0, 1], [1, 2]])
