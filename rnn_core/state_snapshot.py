"""The snapshot format of a keyed state store: one Arrow IPC file of keys, states and last event times.

Columns ``key`` (string), ``state`` (fixed_size_list<float32>[S*L*H]), ``last_time`` (int64 ms); the schema
metadata holds the state shape, the format name, the store's event-time watermark and the caller's entries.
Files are written atomically to any ``pyarrow.fs`` filesystem (temp name + fsync + rename locally; one upload
on object stores). A local file is read memory-mapped: the columns are views of the file's pages, so a restore
copies each state once, from the page cache into the store's slab (a file is never changed in place once it
has its name, only replaced by a rename, so a mapping stays whole).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from rnnstream.rnn_core.storage import local_path, resolve_filesystem, write_atomic

STATE_SHAPE_META = "rnnstream.state_shape"
FORMAT_META = "rnnstream.snapshot_format"
WATERMARK_META = "rnnstream.watermark_ms"
FORMAT = "keyed-state-v1"


def snapshot_table(
    keys: Sequence[str] | pa.Array,
    rows: np.ndarray,
    times: np.ndarray,
    state_shape: tuple[int, int, int],
    watermark_ms: int,
    metadata: Mapping[str, str] | None = None,
) -> pa.Table:
    """The snapshot of ``keys`` with their state ``rows`` ``[n, S*L*H]`` and last ``times``."""
    width = int(np.prod(state_shape))
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[STATE_SHAPE_META] = json.dumps(list(state_shape))
    meta[FORMAT_META] = FORMAT
    meta[WATERMARK_META] = str(int(watermark_ms))
    key_column = keys.cast(pa.string()) if isinstance(keys, pa.Array) else pa.array(list(keys), pa.string())
    return pa.table(
        {
            "key": key_column,
            "state": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), type=pa.float32()), width),
            "last_time": pa.array(times, type=pa.int64()),
        }
    ).replace_schema_metadata(meta)


def read_snapshot_table(
    table: pa.Table, state_shape: tuple[int, int, int]
) -> tuple[pa.ChunkedArray, np.ndarray, np.ndarray, int, dict[str, str]]:
    """(keys, state rows ``[n, S*L*H]``, last times, watermark, the caller's metadata) of a snapshot;
    ``ValueError`` when it holds states of another shape. The rows are a read-only view of the table's
    buffer when the state column is one chunk without nulls (as written), else a copy."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    shape = meta.pop(STATE_SHAPE_META, None)
    meta.pop(FORMAT_META, None)
    watermark = int(meta.pop(WATERMARK_META, -1))
    if shape is None or tuple(json.loads(shape)) != tuple(state_shape):
        raise ValueError(
            f"snapshot state shape {shape} does not match this store's {list(state_shape)}; "
            "restore it with the model it was written with"
        )
    column = table.column("state")
    one = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    states = one.flatten().to_numpy(zero_copy_only=not one.null_count)
    rows = states.reshape(table.num_rows, int(np.prod(state_shape)))  # also a snapshot of no keys
    times = table.column("last_time").to_numpy().astype(np.int64)
    # the keys copied out of the file (13 bytes a key or so): the compiled key index takes writable buffers,
    # and one compiled variant of it serves restores and scoring alike (a memory map's pages are read-only)
    keys = pa.chunked_array([table.column("key").combine_chunks()])
    return keys, rows, times, watermark, meta


def write_snapshot(table: pa.Table, path: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Write a snapshot table as one Arrow IPC file, atomically."""
    fs, fs_path = resolve_filesystem(path, filesystem)

    def write(out: object) -> None:
        with pa.ipc.new_file(out, table.schema) as writer:
            writer.write_table(table)

    write_atomic(fs, fs_path, write)


def read_snapshot(path: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Read a snapshot file (memory-mapped when it is on the local disk)."""
    fs, fs_path = resolve_filesystem(path, filesystem)
    on_disk = local_path(fs, fs_path)
    if on_disk is not None:
        with pa.memory_map(on_disk) as mapped:
            return pa.ipc.open_file(mapped).read_all()
    with fs.open_input_file(fs_path) as f:
        return pa.ipc.open_file(f).read_all()
