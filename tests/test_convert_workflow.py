"""The cluster conversion (workflows/convert_graph.py) run locally against moto's S3: map tasks over
shard groups and partition groups write the same graph, byte for byte, as the local converter."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph_engine.convert import convert_tables
from graph_engine.store import filesystem, read_info
from tests.s3_server import moto_s3
from tests.test_convert_tables import Tables
from workflows.convert_graph import convert_graph


def test_map_tasks_over_shards_and_partitions_write_the_local_converters_graph(tmp_path: Path) -> None:
    nodes, edges = Tables().write(tmp_path / "in")
    local = Path(convert_tables(str(nodes), str(edges), str(tmp_path / "local"), 3, workers=1, name="g"))
    with moto_s3(buckets=["lake", "graphs"], set_env=True):
        fs, _ = filesystem("s3://lake")
        fs.put(str(nodes), "lake/g/nodes", recursive=True)
        fs.put(str(edges), "lake/g/edges", recursive=True)
        uri = convert_graph(nodes="s3://lake/g/nodes", edges="s3://lake/g/edges", out="s3://graphs/g",
                            partitions=3, shards_per_pod=1, partitions_per_pod=2, name="g")
        assert uri == "s3://graphs/g"
        assert read_info(uri) == read_info(str(local))
        theirs = {name.rsplit("/", 1)[1]: fs.cat_file(name) for name in fs.find("graphs/g")}
        assert fs.ls("graphs") == ["graphs/g"], "the scratch prefix is removed"
    assert theirs == {p.name: p.read_bytes() for p in local.iterdir()}


def test_bad_input_fails_a_map_task_naming_the_row_and_publishes_no_graph(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = Tables()
    nodes, edges = t.write(tmp_path / "in")
    dst = t.dst[:300].copy()
    dst[42] = 999
    pq.write_table(pa.table({"src": t.src[:300], "dst": dst}), edges / "part-00001.parquet")
    with moto_s3(buckets=["lake", "graphs"], set_env=True):
        fs, _ = filesystem("s3://lake")
        fs.put(str(nodes), "lake/g/nodes", recursive=True)
        fs.put(str(edges), "lake/g/edges", recursive=True)
        with pytest.raises(Exception, match="an edge's dst 999 is not a node id: column 'dst' at "
                                            "s3://lake/g/edges/part-00001.parquet row 42"):
            convert_graph(nodes="s3://lake/g/nodes", edges="s3://lake/g/edges", out="s3://graphs/g",
                          partitions=2)
        assert not fs.exists("graphs/g/meta.json")


def test_the_cluster_conversion_writes_only_to_s3(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="out: the cluster conversion writes to s3://bucket/prefix"):
        convert_graph(nodes=str(tmp_path), edges=str(tmp_path), out=str(tmp_path / "g"), partitions=2)
