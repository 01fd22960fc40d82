"""Batch inference: every node's embedding and predicted class as Parquet, in parallel ranks, agreeing
with the report's test accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deepgnn.graph_engine.snark.client import MemoryGraph

from graph_engine import datasets
from graph_engine.convert import convert
from workflows import inference
from workflows.ranks import Rank
from workflows.train import GraphInfo, TrainConfig, evaluate, fit, save

# Small evaluation samples make predictions sensitive to which neighbours were drawn: other batches or
# seeds than the test accuracy's would show in the comparison.
CONFIG = TrainConfig(epochs=4, hidden=24, fanouts=(10, 5), eval_fanouts=(2, 2))


def graph() -> datasets.Graph:
    return datasets.synthetic(num_nodes=700, feature_dim=16, avg_degree=6.0, seed=5, feature_signal=0.6)


def test_predictions_cover_every_node_and_match_the_reported_test_accuracy(tmp_path: Path) -> None:
    """Two inference ranks (local processes) and one give the same dataset; its predicted labels score
    exactly the report's test accuracy on the test nodes (same batches, same samples)."""
    source = graph()
    uri = convert(source, str(tmp_path / "g"), 2)
    handle = MemoryGraph(uri, [0, 1])
    trained = fit(handle, GraphInfo.read(uri), CONFIG, progress=False)
    report = evaluate(trained, handle)
    checkpoint = save(trained, tmp_path / "model.pt")

    done = inference.infer(checkpoint, uri, str(tmp_path / "two"), trainers=2)
    assert done.nodes == source.num_nodes and done.nodes_per_second > 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [f"part-0000{r}.parquet" for r in (0, 1)]
    table = inference.read(done.uri)
    assert table.schema == inference.SCHEMA
    ids = table.column("node_id").to_numpy()
    assert ids.tolist() == list(range(source.num_nodes))
    embedding = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert embedding.shape == (source.num_nodes, CONFIG.hidden) and embedding.dtype == np.float32
    predicted = table.column("predicted").to_numpy()
    test = source.test_ids
    assert float(np.mean(predicted[test] == source.labels[test])) == report.test_accuracy
    assert report.test_accuracy > 0.5

    one = inference.read(inference.infer(checkpoint, uri, str(tmp_path / "one"), trainers=1).uri)
    assert one.equals(table)


def test_inference_refuses_a_used_target_and_a_graph_the_model_cannot_read(tmp_path: Path) -> None:
    uri = convert(graph(), str(tmp_path / "g"), 1)
    trained = fit(MemoryGraph(uri, [0]), GraphInfo.read(uri), TrainConfig(epochs=1), progress=False)
    checkpoint = save(trained, tmp_path / "model.pt")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(FileExistsError, match="already holds Parquet files"):
        inference.infer(checkpoint, uri, str(tmp_path / "used"))
    other = convert(datasets.synthetic(num_nodes=300, feature_dim=8), str(tmp_path / "other"), 1)
    with pytest.raises(ValueError, match="16 features, 5 classes.*cannot read.*8 features"):
        inference.infer(checkpoint, other, str(tmp_path / "out"))


def test_node_maps_come_from_the_manifest_without_listing_the_store(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank reads its partitions' node maps by the names the manifest lists: no listing of the
    store (on S3, a LIST per partition), and every node once."""
    import fsspec.implementations.local

    uri = convert(graph(), str(tmp_path / "g"), 3)

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError("inference listed the store")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "glob", no_listing)
    info = GraphInfo.read(uri)
    seen = np.concatenate([nodes for r in range(2) for nodes, _ in
                           inference.rank_batches(info, Rank(r, 2))])
    assert sorted(seen.tolist()) == list(range(graph().num_nodes))
