"""The checks that decide whether an event is valid, and why not (one vocabulary of reasons).

:func:`validate_event` checks one event (a JSON object, or an Arrow row as Python values) and is the one
place that names the reason; :func:`bad_rows` runs the same checks vectorized over decoded columns, and
:func:`conform_arrow` refuses Arrow columns of a type the JSON path would refuse (a cast would quietly turn
``"1.5"`` or ``true`` into a number). Numbers must fit float32, what the model reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN, EventSchema
from rnnstream.workers.event_wire import (
    DEFAULT_MAX_FUTURE_MS,
    EMPTY_KEY,
    INVALID_TEXT,
    MISSING_FIELD,
    NOT_FINITE,
    NOT_OBJECT,
    NULL_VALUE,
    TIME_OUT_OF_RANGE,
    WRONG_SCHEMA,
    WRONG_TYPE,
    WRONG_VECTOR_LENGTH,
)

F32_MAX = float(np.finfo(np.float32).max)


class Problem(Exception):
    """Why an event is bad: a reason code (see :data:`REASONS`) and a detail line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def validate_event(
    event: Any, schema: EventSchema, now_ms: int, max_future_ms: int = DEFAULT_MAX_FUTURE_MS
) -> tuple[str, str] | dict[str, Any]:
    """Check one event (a dict as parsed from JSON, or an Arrow row as Python values).

    Returns the normalized event (time as int ms, numbers as float, vectors as float lists) or
    ``(reason, detail)``. The one place that decides *why* an event is bad.
    """
    try:
        return _normalize(event, schema, now_ms, max_future_ms)
    except Problem as p:
        return (p.reason, p.detail)


def _get(event: Mapping[str, Any], name: str) -> Any:
    if name not in event:
        raise Problem(MISSING_FIELD, f"field {name!r} is missing")
    v = event[name]
    if v is None:
        raise Problem(NULL_VALUE, f"field {name!r} is null")
    return v


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Problem(WRONG_TYPE, f"field {name!r} must be a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # an integer too large for a double
        raise Problem(NOT_FINITE, f"field {name!r} is too large for a double") from None
    if not math.isfinite(f):
        raise Problem(NOT_FINITE, f"field {name!r} is {f}")
    return f


def _normalize(event: Any, schema: EventSchema, now_ms: int, max_future_ms: int) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise Problem(NOT_OBJECT, f"an event must be a JSON object, got {type(event).__name__}")
    out: dict[str, Any] = {}
    key = _get(event, KEY_COLUMN)
    if not isinstance(key, str):
        raise Problem(WRONG_TYPE, f"field 'key' must be a string, got {type(key).__name__}")
    if not key:
        raise Problem(EMPTY_KEY, "field 'key' is empty")
    _check_text("key", key)
    out[KEY_COLUMN] = key
    t = _get(event, TIME_COLUMN)
    if isinstance(t, bool) or not isinstance(t, int):
        raise Problem(WRONG_TYPE, f"field 'time' must be an integer (epoch ms), got {type(t).__name__}")
    if t < 0:
        raise Problem(TIME_OUT_OF_RANGE, f"time {t} ms is before 1970")
    if t > now_ms + max_future_ms:
        raise Problem(TIME_OUT_OF_RANGE, f"time {t} ms is more than {max_future_ms} ms in the future")
    out[TIME_COLUMN] = t
    for name in schema.numeric:
        f = _number(name, _get(event, name))
        if abs(f) > F32_MAX:
            raise Problem(NOT_FINITE, f"field {name!r} = {f} overflows float32")
        out[name] = f
    for name, size in schema.vectors:
        v = _get(event, name)
        if not isinstance(v, list):
            raise Problem(WRONG_TYPE, f"field {name!r} must be a list of {size} numbers")
        if len(v) != size:
            raise Problem(WRONG_VECTOR_LENGTH, f"field {name!r} has {len(v)} values, expected {size}")
        vals = []
        for i, x in enumerate(v):
            if x is None:
                raise Problem(NULL_VALUE, f"field {name!r}[{i}] is null")
            f = _number(f"{name}[{i}]", x)
            if abs(f) > F32_MAX:
                raise Problem(NOT_FINITE, f"field {name}[{i}] = {f} overflows float32")
            vals.append(f)
        out[name] = vals
    for name, _vocab in schema.categorical:
        v = _get(event, name)
        if not isinstance(v, str):
            raise Problem(WRONG_TYPE, f"field {name!r} must be a string, got {type(v).__name__}")
        _check_text(name, v)
        out[name] = v
    if schema.has_label:
        lab = event.get(LABEL_COLUMN)
        if lab is not None and (isinstance(lab, bool) or not isinstance(lab, int)):
            raise Problem(WRONG_TYPE, f"field 'label' must be an integer or null, got {type(lab).__name__}")
        if lab is not None and not -(2**63) <= lab < 2**63:
            raise Problem(WRONG_TYPE, "field 'label' does not fit in int64")
        out[LABEL_COLUMN] = lab
    return out


def _check_arrow_type(name: str, typ: pa.DataType, schema: EventSchema) -> None:
    """Refuse what the JSON path refuses (an Arrow cast would quietly turn "1.5" or true into a number)."""

    def numeric(t: pa.DataType) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t)

    def text(t: pa.DataType) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)

    if pa.types.is_null(typ):
        return  # an all-null column: the null checks reject each row
    vectors = {n for n, _ in schema.vectors}
    if name in schema.numeric:
        ok = numeric(typ)
    elif name in vectors:
        ok = (pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ)) and (
            numeric(typ.value_type) or pa.types.is_null(typ.value_type)
        )
    elif name == TIME_COLUMN:
        ok = pa.types.is_integer(typ) or pa.types.is_timestamp(typ)
    elif name == LABEL_COLUMN:
        ok = pa.types.is_integer(typ)
    else:  # key and categorical columns
        ok = text(typ)
    if not ok:
        raise Problem(
            WRONG_SCHEMA, f"column {name!r} has Arrow type {typ}, which events of this schema cannot have"
        )


def _check_text(name: str, v: str) -> None:
    try:
        v.encode()
    except UnicodeEncodeError:  # e.g. a lone surrogate escape "\\ud800" in JSON
        raise Problem(INVALID_TEXT, f"field {name!r} is not valid Unicode text") from None


def _model_ready_vector(typ: pa.DataType, size: int) -> bool:
    """A vector column already as the model reads it: ``fixed_size_list<float32>`` of the schema's size
    (what :class:`EventProducer` sends)."""
    return pa.types.is_fixed_size_list(typ) and typ.list_size == size and pa.types.is_float32(typ.value_type)


def conform_arrow(table: pa.Table, parse_schema: pa.Schema, schema: EventSchema) -> dict[str, pa.Array]:
    """Arrow columns cast to the parse schema's types (vectors as list<float64>, except those already
    ``fixed_size_list<float32>`` of their size, kept as they are: no float64 copy of every value to check
    and cast back), or :class:`Problem`."""
    cols: dict[str, pa.Array] = {}
    names = set(table.schema.names)
    sizes = dict(schema.vectors)
    for f in parse_schema:
        if f.name not in names:
            if f.name == LABEL_COLUMN:
                cols[f.name] = pa.nulls(table.num_rows, pa.int64())
                continue
            raise Problem(WRONG_SCHEMA, f"column {f.name!r} is missing")
        col = table.column(f.name).combine_chunks()
        _check_arrow_type(f.name, col.type, schema)
        try:
            if f.name == TIME_COLUMN and pa.types.is_timestamp(col.type):
                col = pc.cast(col, pa.timestamp("ms"), safe=False).cast(pa.int64())
            elif f.name in sizes and _model_ready_vector(col.type, sizes[f.name]):
                pass
            elif pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
                col = pc.cast(col, pa.list_(pa.float64()))
            else:
                col = pc.cast(col, f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise Problem(WRONG_SCHEMA, f"column {f.name!r}: {exc}"[:300]) from exc
        cols[f.name] = col
    return cols


def bad_rows(
    cols: Mapping[str, pa.Array], schema: EventSchema, now: int | np.ndarray, max_future_ms: int
) -> np.ndarray | None:
    """Boolean mask of rows failing any check, or None when all rows pass (``now``: the reference time
    of the future check, one for all rows or one per row)."""
    n = len(cols[KEY_COLUMN])
    bad = np.zeros(n, dtype=bool)
    any_bad = False

    def mark(mask: pa.Array | np.ndarray) -> None:
        nonlocal any_bad
        arr = mask if isinstance(mask, np.ndarray) else mask.to_numpy(zero_copy_only=False)
        if arr.any():
            np.logical_or(bad, arr, out=bad)
            any_bad = True

    for name, col in cols.items():
        if name != LABEL_COLUMN and col.null_count:
            mark(pc.is_null(col))
    key = cols[KEY_COLUMN]
    mark(pc.fill_null(pc.equal(pc.binary_length(key), 0), False))
    t = cols[TIME_COLUMN]
    latest = now + max_future_ms
    latest = pa.array(latest, pa.int64()) if isinstance(latest, np.ndarray) else latest
    mark(pc.fill_null(pc.or_(pc.less(t, 0), pc.greater(t, latest)), False))
    for name in schema.numeric:  # NaN, inf and float32 overflow (the model reads float32)
        mark(pc.fill_null(pc.invert(pc.less_equal(pc.abs(cols[name]), F32_MAX)), False))
    for name, size in schema.vectors:
        col = cols[name]
        if _model_ready_vector(col.type, size):  # every row holds ``size`` values: check them in place
            values = col.values.slice(col.offset * size, len(col) * size)
            v = values.to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                mark(~(np.abs(v) <= F32_MAX).reshape(len(col), size).all(axis=1))
            continue
        lengths = pc.fill_null(pc.list_value_length(col), size)
        wrong_len = pc.not_equal(lengths, size).to_numpy(zero_copy_only=False)
        mark(wrong_len)
        values = col.values  # whole child array; offsets index into it
        if len(values):
            v = values.to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                elem_bad = ~(np.abs(v) <= F32_MAX)  # NaN, inf, null->nan, float32 overflow
            if elem_bad.any():
                offsets = col.offsets.to_numpy()
                cs = np.concatenate([[0], np.cumsum(elem_bad, dtype=np.int64)])
                mark((cs[offsets[1:]] - cs[offsets[:-1]]) > 0)
    return bad if any_bad else None
