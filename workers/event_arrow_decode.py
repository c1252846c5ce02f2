"""Arrow event messages decoded and checked: the Arrow half of :class:`event_codec.EventDecoder`.

:func:`decode_arrow_message` reads one message: unreadable, oversized, another pipeline's or version's
message is one reject; a bad row is a reject of that row alone (a one-row Arrow IPC stream, its index
kept) while the others stay valid. :func:`decode_arrow_together` checks a poll's clean messages as one
table (one pass of the vectorized checks), or says they are not all clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.workers.event_validation import Problem, bad_rows, conform_arrow, validate_event
from rnnstream.workers.event_wire import (
    ARROW,
    INVALID_EVENT,
    NOT_ARROW,
    TOO_LARGE,
    TRUNCATED_ARROW,
    WRONG_PIPELINE,
    WRONG_SCHEMA_VERSION,
    MessageLike,
    Reject,
    encode_arrow,
    reject_of,
)


def decode_arrow_message(
    dec: Any, m: MessageLike, now: int
) -> tuple[int, pa.RecordBatch | None, list[Reject]]:
    """One message with ``dec`` (an EventDecoder): (events in, valid rows + a trailing event-index column,
    rejects)."""
    value = m.value or b""
    if len(value) > dec.max_arrow_bytes:
        return (
            1,
            None,
            [reject_of(m, TOO_LARGE, f"{len(value)} bytes > {dec.max_arrow_bytes}", ARROW)],
        )
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
        looks_ipc = value[:4] == b"\xff\xff\xff\xff"
        reason = TRUNCATED_ARROW if looks_ipc else NOT_ARROW
        return 1, None, [reject_of(m, reason, f"cannot read Arrow IPC: {exc}"[:300], ARROW)]
    meta = table.schema.metadata or {}
    their_pipeline = meta.get(b"rnnstream.pipeline")
    if their_pipeline is not None and their_pipeline != dec._pipeline:
        detail = f"batch schema is of pipeline {their_pipeline.decode(errors='replace')!r}"
        return 1, None, [reject_of(m, WRONG_PIPELINE, detail, ARROW)]
    their_version = meta.get(b"rnnstream.schema_version")
    if their_version is not None and their_version != dec._version:
        detail = f"batch schema version {their_version.decode(errors='replace')}"
        return 1, None, [reject_of(m, WRONG_SCHEMA_VERSION, detail, ARROW)]
    try:
        cols = conform_arrow(table, dec._parse_schema, dec.schema)
    except Problem as p:
        return 1, None, [reject_of(m, p.reason, p.detail, ARROW)]
    n = table.num_rows
    bad = bad_rows(cols, dec.schema, now, dec.max_future_ms)
    rejects: list[Reject] = []
    positions = pa.array(np.arange(n, dtype=np.int32))
    if bad is not None:
        src = table.combine_chunks()
        for j in np.flatnonzero(bad):
            row = {name: cols[name][j].as_py() for name in cols}
            res = validate_event(row, dec.schema, now, dec.max_future_ms)
            reason, detail = res if isinstance(res, tuple) else (INVALID_EVENT, "row failed checks")
            raw = encode_arrow(src.slice(int(j), 1))
            rejects.append(reject_of(m, reason, detail, ARROW, raw=raw, event_index=int(j)))
        keep = pa.array(~bad)
        cols = {k: pc.filter(c, keep) for k, c in cols.items()}
        positions = pc.filter(positions, keep)
    batch = dec._to_batch(cols)
    out = pa.RecordBatch.from_arrays([*batch.columns, positions], names=[*batch.schema.names, "__idx"])
    return n, out, rejects


def decode_arrow_together(
    dec: Any, messages: Sequence[MessageLike], idx: list[int], now: np.ndarray
) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray] | None:
    """The Arrow messages ``idx`` read, conformed and checked as one table (one pass of the vectorized
    checks instead of one a message): (valid rows, message index, row within the message). None when
    any message is not clean (unreadable, another pipeline/version/schema, a bad row): then each is
    decoded on its own, which finds and explains what is wrong."""
    tables = []
    try:
        for i in idx:
            value = messages[i].value or b""
            if len(value) > dec.max_arrow_bytes:
                return None
            table = pa.ipc.open_stream(value).read_all()
            meta = table.schema.metadata or {}
            if meta.get(b"rnnstream.pipeline", dec._pipeline) != dec._pipeline:
                return None
            if meta.get(b"rnnstream.schema_version", dec._version) != dec._version:
                return None
            if tables and not table.schema.equals(tables[0].schema):
                return None
            tables.append(table)
        lengths = np.fromiter((t.num_rows for t in tables), dtype=np.int64, count=len(tables))
        cols = conform_arrow(pa.concat_tables(tables), dec._parse_schema, dec.schema)
        if bad_rows(cols, dec.schema, np.repeat(now[idx], lengths), dec.max_future_ms) is not None:
            return None
        batch = dec._to_batch(cols)
    except Exception:  # Problem, unreadable IPC, anything unforeseen: message by message
        return None
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = (np.arange(int(lengths.sum()), dtype=np.int64) - firsts).astype(np.int32)
    return batch, np.repeat(np.asarray(idx, dtype=np.int64), lengths), positions
