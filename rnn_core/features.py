"""Arrow events -> the model's float32 input matrix, laid out as :class:`FeatureSpec` says.

Layout of one row (width ``spec.input_size``): the numeric columns, each vector column expanded in place,
one code per categorical column (0 = unknown, i+1 = the i-th vocabulary value), and last, when
``spec.use_time_delta`` is set, the seconds since the key's previous event. That last column is left 0 here:
only the code that knows each key's previous event (the stream scorer, the training sequences) can fill it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.rnn_core.config import FeatureSpec


def feature_slices(spec: FeatureSpec) -> tuple[slice, slice, int | None]:
    """Where things sit in an input row: (continuous columns, categorical codes, time-delta index or None)."""
    n_cont = spec.num_continuous
    n_cat = len(spec.categorical)
    dt_index = n_cont + n_cat if spec.use_time_delta else None
    return slice(0, n_cont), slice(n_cont, n_cont + n_cat), dt_index


def features_from_arrow(batch: pa.RecordBatch | pa.Table, spec: FeatureSpec) -> np.ndarray:
    """The model input ``float32 [N, spec.input_size]`` of a batch of events (time-delta column left 0).

    Raises ``ValueError`` naming the column when a column is missing, has the wrong vector size, or a numeric
    value is null (the event codec rejects such events before they get here). Unknown or null categorical
    values get code 0.
    """
    n = batch.num_rows
    out = np.zeros((n, spec.input_size), dtype=np.float32)
    col = 0
    for name in spec.numeric:
        arr = _column(batch, name)
        if arr.null_count:
            raise ValueError(f"numeric column {name!r} has {arr.null_count} null values")
        out[:, col] = arr.to_numpy(zero_copy_only=False)
        col += 1
    for name, size in zip(spec.vectors, spec.vector_sizes, strict=True):
        arr = _column(batch, name)
        if arr.null_count:
            raise ValueError(f"vector column {name!r} has {arr.null_count} null values")
        if not pa.types.is_fixed_size_list(arr.type) or arr.type.list_size != size:
            raise ValueError(
                f"vector column {name!r} must be fixed_size_list<float32, {size}>, got {arr.type}"
            )
        values = arr.flatten()
        if values.null_count:
            raise ValueError(f"vector column {name!r} has null elements")
        out[:, col : col + size] = values.to_numpy(zero_copy_only=False).reshape(n, size)
        col += size
    for name, vocab in zip(spec.categorical, spec.vocabularies, strict=True):
        arr = _column(batch, name)
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = pc.cast(arr, pa.string())
        idx = pc.index_in(arr, value_set=pa.array(vocab, type=arr.type))
        codes = pc.fill_null(pc.add(idx, 1), 0)
        out[:, col] = codes.to_numpy(zero_copy_only=False)
        col += 1
    return out


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    if name not in batch.schema.names:
        raise ValueError(f"events have no column {name!r} (columns: {batch.schema.names})")
    arr = batch.column(name)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr
