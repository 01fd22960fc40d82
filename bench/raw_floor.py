"""The conversion's floor: read every column of every node and (unweighted) edge shard and write it
as a raw array. Run by bench/graph_scale.py as its own process, importing no more than it needs.

    python bench/raw_floor.py TABLES OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_raw(root: str, out: str) -> None:
    """Read every column of every node and (unweighted) edge shard and write it as a raw array."""
    Path(out).mkdir()
    for f in sorted([*Path(root).glob("nodes/*.parquet"), *Path(root).glob("edges/*.parquet")]):
        table = pq.read_table(f)
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                column = column.flatten()
            if pa.types.is_string(column.type):
                column = column.dictionary_encode().indices
            column.to_numpy(zero_copy_only=False).tofile(Path(out) / f"{f.parent.name}-{f.stem}-{name}")


if __name__ == "__main__":
    write_raw(sys.argv[1], sys.argv[2])
