"""Graph tables as users bring them (sharded Parquet, local or s3://), read batch by batch into arrays.

Node table: `id` (int64 >= 0, any values), `features` (list or fixed-size list of float32, one length
for all), optional `label` (int64; -1 or null = none), optional `split` (string `train`/`val`/`test`;
null = none). Edge table: `src`, `dst` (node ids), optional `weight` (float32). Every problem is a
`TableError` naming the file, the column and the rows, found before anything is published.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from graph_engine.store import filesystem, is_s3

# Node type per split, as the store records it (datasets.Graph.split_types).
SPLITS = {"train": 0, "val": 1, "test": 2}
UNLABELLED_TYPE = 3
NODE_COLUMNS = ("id", "features", "label", "split")
EDGE_COLUMNS = ("src", "dst", "weight")
# Rows per batch: bounds the working set of a reader (~50 MB at 128-d features).
BATCH_ROWS = 1 << 16


class TableError(ValueError):
    """Bad input in a graph table: names the file, the column and the rows."""


@dataclass(frozen=True)
class Origin:
    """Where a batch came from: a file (URI) and the row number of its first row."""

    file: str
    first_row: int

    def rows(self, start: int, stop: int | None = None) -> str:
        a = self.first_row + start
        b = a if stop is None else self.first_row + stop - 1
        return f"row {a}" if a == b else f"rows {a}-{b}"


@dataclass(frozen=True)
class NodeBatch:
    ids: np.ndarray        # int64
    types: np.ndarray      # int32: 0 train, 1 val, 2 test, 3 none
    features: np.ndarray   # float32 [n, F]
    labels: np.ndarray     # int64, -1 none
    origin: Origin


@dataclass(frozen=True)
class EdgeBatch:
    src: np.ndarray        # int64
    dst: np.ndarray        # int64
    weight: np.ndarray     # float32
    origin: Origin


def shards(uri: str) -> list[str]:
    """The Parquet files of a table: the file itself, or a folder's `*.parquet` files in name order
    (Spark's `_SUCCESS`, `.crc` and hidden files skipped)."""
    fs, path = filesystem(uri)
    scheme = "s3://" if is_s3(uri) else ""
    if not fs.exists(path):
        raise TableError(f"{uri}: no such file or folder")
    if fs.isfile(path):
        return [scheme + path]
    found = sorted(p for p in fs.find(path) if p.endswith(".parquet")
                   and not any(part.startswith((".", "_")) for part in p[len(path):].split("/")))
    if not found:
        raise TableError(f"{uri}: the folder holds no .parquet files")
    return [scheme + p for p in found]


def _open(uri: str) -> pq.ParquetFile:
    fs, path = filesystem(uri)
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{uri}: not a readable Parquet file ({err})") from None


def _column(schema: pa.Schema, uri: str, name: str, required: bool, kind: str, check: object) -> bool:
    if name not in schema.names:
        if required:
            raise TableError(f"{uri}: missing column {name!r} ({kind}); the columns are {schema.names}")
        return False
    typ = schema.field(name).type
    if not check(typ):  # type: ignore[operator]
        raise TableError(f"{uri}: column {name!r} has type {typ}; expected {kind}")
    return True


def _is_float_list(typ: pa.DataType) -> bool:
    return ((pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ))
            and pa.types.is_floating(typ.value_type))


def _is_string(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _ids(array: pa.Array, origin: Origin, column: str) -> np.ndarray:
    if array.null_count:
        bad = _first(array.is_null().to_numpy(zero_copy_only=False))
        raise TableError(f"{origin.file}: column {column!r} is null at {origin.rows(bad)}; "
                         "every row needs an id")
    try:
        values = array.cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        raise TableError(f"{origin.file}: column {column!r} holds a value beyond int64 in "
                         f"{origin.rows(0, len(array))}") from None
    if (values < 0).any():
        bad = _first(values < 0)
        raise TableError(f"{origin.file}: column {column!r} is {values[bad]} at {origin.rows(bad)}; node ids "
                         "must be >= 0 (DeepGNN stores them unsigned and uses -1 for 'none')")
    return values


def _features(array: pa.Array, origin: Origin, dim: int | None) -> np.ndarray:
    if array.null_count:
        bad = _first(array.is_null().to_numpy(zero_copy_only=False))
        raise TableError(f"{origin.file}: column 'features' is null at {origin.rows(bad)}; every node needs "
                         "its feature vector")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    width = dim if dim is not None else (int(lengths[0]) if len(lengths) else 0)
    if (lengths != width).any():
        bad = _first(lengths != width)
        raise TableError(f"{origin.file}: column 'features' has {lengths[bad]} values at {origin.rows(bad)}, "
                         f"{width} before it; every node needs the same feature length (ragged features)")
    values = array.flatten()
    if values.null_count:
        bad = _first(values.is_null().to_numpy(zero_copy_only=False)) // max(width, 1)
        raise TableError(f"{origin.file}: column 'features' holds a null value at {origin.rows(bad)}")
    return values.cast(pa.float32()).to_numpy().reshape(len(array), width)


def _labels(array: pa.Array | None, n: int, origin: Origin) -> np.ndarray:
    if array is None:
        return np.full(n, -1, np.int64)
    values = array.cast(pa.int64()).fill_null(-1).to_numpy()
    if (values < -1).any():
        bad = _first(values < -1)
        raise TableError(f"{origin.file}: column 'label' is {values[bad]} at {origin.rows(bad)}; labels are "
                         "class numbers >= 0, or -1/null for none")
    return values


def _types(array: pa.Array | None, labels: np.ndarray, origin: Origin) -> np.ndarray:
    types = np.full(len(labels), UNLABELLED_TYPE, np.int32)
    if array is None:
        return types
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    for name, code in SPLITS.items():
        types[pc.fill_null(pc.equal(array, name), False).to_numpy(zero_copy_only=False)] = code
    unknown = (types == UNLABELLED_TYPE) & ~array.is_null().to_numpy(zero_copy_only=False)
    if unknown.any():
        bad = _first(unknown)
        raise TableError(f"{origin.file}: column 'split' is {array[bad].as_py()!r} at {origin.rows(bad)}; "
                         "expected 'train', 'val', 'test' or null")
    unlabelled = (types != UNLABELLED_TYPE) & (labels < 0)
    if unlabelled.any():
        bad = _first(unlabelled)
        raise TableError(f"{origin.file}: {origin.rows(bad)} is in split {array[bad].as_py()!r} but its "
                         "'label' is null or -1; a train/val/test node needs a label")
    return types


def read_nodes(uri: str, dim: int | None = None) -> Iterator[NodeBatch]:
    """The node table file `uri` batch by batch, validated; `dim`: the feature length shards before it had."""
    table = _open(uri)
    schema = table.schema_arrow
    _column(schema, uri, "id", True, "int64 node ids", pa.types.is_integer)
    _column(schema, uri, "features", True, "a list of float32", _is_float_list)
    has_label = _column(schema, uri, "label", False, "int64 class numbers", pa.types.is_integer)
    has_split = _column(schema, uri, "split", False, "strings train/val/test", _is_string)
    columns = ["id", "features"] + ["label"] * has_label + ["split"] * has_split
    row = 0
    for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        origin = Origin(uri, row)
        ids = _ids(batch.column("id"), origin, "id")
        features = _features(batch.column("features"), origin, dim)
        dim = features.shape[1]
        labels = _labels(batch.column("label") if has_label else None, len(ids), origin)
        types = _types(batch.column("split") if has_split else None, labels, origin)
        yield NodeBatch(ids, types, features, labels, origin)
        row += batch.num_rows


def read_edges(uri: str) -> Iterator[EdgeBatch]:
    """The edge table file `uri` batch by batch, validated (ids are checked against nodes later)."""
    table = _open(uri)
    schema = table.schema_arrow
    _column(schema, uri, "src", True, "int64 node ids", pa.types.is_integer)
    _column(schema, uri, "dst", True, "int64 node ids", pa.types.is_integer)
    has_weight = _column(schema, uri, "weight", False, "float32 weights", pa.types.is_floating)
    row = 0
    for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=["src", "dst"] + ["weight"] * has_weight):
        origin = Origin(uri, row)
        src = _ids(batch.column("src"), origin, "src")
        dst = _ids(batch.column("dst"), origin, "dst")
        if has_weight:
            column = batch.column("weight")
            if column.null_count:
                bad = _first(column.is_null().to_numpy(zero_copy_only=False))
                raise TableError(f"{uri}: column 'weight' is null at {origin.rows(bad)}")
            weight = column.cast(pa.float32()).to_numpy()
            if not (np.isfinite(weight) & (weight >= 0)).all():
                bad = _first(~(np.isfinite(weight) & (weight >= 0)))
                raise TableError(f"{uri}: column 'weight' is {weight[bad]} at {origin.rows(bad)}; "
                                 "weights must be finite and >= 0")
        else:
            weight = np.ones(len(src), np.float32)
        yield EdgeBatch(src, dst, weight, origin)
        row += batch.num_rows


def locate(files: list[str], column: str, value: int, limit: int = 2) -> list[str]:
    """Where `value` occurs in `column` of these files ("file row r"), at most `limit` places: how an
    error found after shuffling (duplicate or unknown id) names its rows."""
    places: list[str] = []
    for uri in files:
        row = 0
        for batch in _open(uri).iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            values = batch.column(column).cast(pa.int64()).to_numpy(zero_copy_only=False)
            hits = np.flatnonzero(values == value)
            places += [f"{uri} row {row + int(h)}" for h in hits[:limit - len(places)]]
            if len(places) >= limit:
                return places
            row += batch.num_rows
    return places
