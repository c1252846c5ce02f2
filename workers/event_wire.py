"""Events on the wire: the two encodings, their headers, reject reasons, and what decoding returns.

Two encodings, told apart by the ``rnnstream-encoding`` message header:

- ``json``: one event per message, a JSON object ``{"key": str, "time": int epoch ms, <numeric>: number,
  <vector>: [numbers], <categorical>: str, "label": int|null}``; unknown fields are ignored. A message with no
  encoding header is read as JSON, so any producer can write events.
- ``arrow``: one Arrow IPC stream per message holding a record batch of many events (of many keys) in the
  pipeline's arrow schema: the fast path.

Headers ``rnnstream-pipeline`` and ``rnnstream-schema-version`` name the schema the producer used; when
present they must match the consumer's. Decoding is :mod:`rnnstream.workers.event_codec`; the checks of one
event are :mod:`rnnstream.workers.event_validation`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.rnn_core.event_schema import TIME_COLUMN, EventSchema

ENCODING_HEADER = "rnnstream-encoding"
PIPELINE_HEADER = "rnnstream-pipeline"
VERSION_HEADER = "rnnstream-schema-version"
JSON = "json"
ARROW = "arrow"
_ARROW_BYTES = ARROW.encode()
ENCODINGS = (JSON, ARROW)

DEFAULT_MAX_JSON_BYTES = 256 * 1024
DEFAULT_MAX_ARROW_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_FUTURE_MS = 7 * 24 * 3600 * 1000
_F32_MAX = float(np.finfo(np.float32).max)

# Reject reason codes (stable strings: they go into the DLQ header ``reason``).
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
NOT_ARROW = "not_arrow"
TRUNCATED_ARROW = "truncated_arrow"
TOO_LARGE = "too_large"
UNKNOWN_ENCODING = "unknown_encoding"
BAD_HEADER = "bad_header"
WRONG_PIPELINE = "wrong_pipeline"
WRONG_SCHEMA_VERSION = "wrong_schema_version"
WRONG_SCHEMA = "wrong_schema"
MISSING_FIELD = "missing_field"
NULL_VALUE = "null_value"
EMPTY_KEY = "empty_key"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
WRONG_VECTOR_LENGTH = "wrong_vector_length"
TIME_OUT_OF_RANGE = "time_out_of_range"
INVALID_TEXT = "invalid_text"
INVALID_EVENT = "invalid_event"
REASONS = (
    NOT_JSON,
    NOT_OBJECT,
    NOT_ARROW,
    TRUNCATED_ARROW,
    TOO_LARGE,
    UNKNOWN_ENCODING,
    BAD_HEADER,
    WRONG_PIPELINE,
    WRONG_SCHEMA_VERSION,
    WRONG_SCHEMA,
    MISSING_FIELD,
    NULL_VALUE,
    EMPTY_KEY,
    WRONG_TYPE,
    NOT_FINITE,
    WRONG_VECTOR_LENGTH,
    TIME_OUT_OF_RANGE,
    INVALID_TEXT,
    INVALID_EVENT,
)


class MessageLike(Protocol):
    """What decode reads from a Kafka message (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None


class RawMessage(NamedTuple):
    """A Kafka message as bytes and provenance (same field names as kafka-python's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Reject:
    """One event (or unreadable message) that failed validation, with where it came from.

    ``raw`` is the message value unchanged for message-level rejects (``event_index`` None); for one bad row
    of an Arrow message it is that row as a one-row Arrow IPC stream (``event_index`` = row number).
    """

    raw: bytes
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None
    event_index: int | None = None
    encoding: str = JSON


@dataclass(frozen=True)
class DecodedBatch:
    """Valid events of a list of messages (one RecordBatch) with per-event provenance, and the rejects."""

    batch: pa.RecordBatch
    partition: np.ndarray  # int32 [num_valid]
    offset: np.ndarray  # int64 [num_valid]
    timestamp_ms: np.ndarray  # int64 [num_valid], broker (message) timestamp
    event_index: np.ndarray  # int32 [num_valid], row within its message (0 for JSON)
    rejects: list[Reject] = field(default_factory=list)
    events_in: int = 0
    messages_in: int = 0

    @property
    def num_valid(self) -> int:
        return self.batch.num_rows

    @classmethod
    def of_parts(
        cls,
        messages: Sequence[MessageLike],
        parts: list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]],
        rejects: list[Reject],
        events_in: int,
        arrow_schema: pa.Schema,
    ) -> DecodedBatch:
        """One batch in message order (rows of one Arrow message in row order) from decoded parts, each
        (valid rows, their message index, their row within the message)."""
        if not parts:
            empty = pa.RecordBatch.from_pylist([], schema=arrow_schema)
            z32, z64 = np.zeros(0, np.int32), np.zeros(0, np.int64)
            return cls(empty, z32, z64, z64.copy(), z32.copy(), rejects, events_in, len(messages))
        if len(parts) == 1:
            batch, msg_idx, ev_idx = parts[0]
        else:
            msg_idx = np.concatenate([p[1] for p in parts])
            ev_idx = np.concatenate([p[2] for p in parts])
            table = pa.Table.from_batches([p[0] for p in parts], schema=arrow_schema)
            order = np.lexsort((ev_idx, msg_idx))
            if not np.array_equal(order, np.arange(len(order))):
                table = table.take(pa.array(order))
                msg_idx, ev_idx = msg_idx[order], ev_idx[order]
            batch = table.combine_chunks().to_batches()[0]
        n = len(messages)
        partition = np.fromiter(map(attrgetter("partition"), messages), dtype=np.int32, count=n)
        offset = np.fromiter(map(attrgetter("offset"), messages), dtype=np.int64, count=n)
        ts = message_timestamps(messages)
        return cls(
            batch, partition[msg_idx], offset[msg_idx], ts[msg_idx], ev_idx, rejects, events_in, len(messages)
        )

    def check_invariant(self) -> None:
        """Raise AssertionError unless events in == valid + rejected."""
        if self.events_in != self.num_valid + len(self.rejects):
            raise AssertionError(
                f"events in {self.events_in} != valid {self.num_valid} + rejected {len(self.rejects)}"
            )


def message_timestamps(messages: Sequence[MessageLike]) -> np.ndarray:
    """Each message's record timestamp (int64 ms; -1 where it has none)."""
    n = len(messages)
    try:
        return np.fromiter(map(attrgetter("timestamp"), messages), dtype=np.int64, count=n)
    except TypeError:  # a message without a timestamp
        return np.fromiter((-1 if m.timestamp is None else m.timestamp for m in messages), np.int64, count=n)


def message_encoding(headers: Sequence[tuple[str, bytes]] | None) -> str:
    """``arrow`` when the message's encoding header says so, else ``json`` (the default encoding)."""
    return ARROW if header_value(headers, ENCODING_HEADER) == _ARROW_BYTES else JSON


def header_value(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the first Kafka header called ``name``, or None (headers are a list of pairs)."""
    if headers:
        for k, v in headers:
            if k == name:
                return v
    return None


def message_headers(schema: EventSchema, encoding: str) -> list[tuple[str, bytes]]:
    """The headers every rnnstream producer puts on a message of ``encoding``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return [
        (ENCODING_HEADER, encoding.encode()),
        (PIPELINE_HEADER, schema.pipeline.encode()),
        (VERSION_HEADER, str(schema.version).encode()),
    ]


def event_to_json(event: Mapping[str, Any]) -> bytes:
    """One event (a dict: key, time as epoch ms int or datetime, fields) as a compact JSON message value."""
    d = dict(event)
    t = d.get(TIME_COLUMN)
    if hasattr(t, "timestamp"):
        d[TIME_COLUMN] = round(t.timestamp() * 1000)
    return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()


def table_to_json(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """Each row of an events table (pipeline arrow schema) as one JSON message value, in row order.

    float32 vector values are written with their shortest float32 decimal (``0.95764667``, not
    ``0.9576466679573059``): smaller messages, faster parsing, and they read back to the same float32.
    """
    if TIME_COLUMN in table.schema.names and pa.types.is_timestamp(table.schema.field(TIME_COLUMN).type):
        idx = table.schema.get_field_index(TIME_COLUMN)
        times = pc.cast(table.column(idx), pa.timestamp("ms")).cast(pa.int64())
        table = table.set_column(idx, TIME_COLUMN, times)
    short: dict[str, list] = {}
    for f in table.schema:
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_float32(f.type.value_type):
            col = table.column(f.name)
            col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            if col.null_count:
                continue
            as_text = pc.cast(col.flatten(), pa.string()).to_numpy(zero_copy_only=False)
            short[f.name] = np.asarray(as_text, dtype=np.float64).reshape(-1, f.type.list_size).tolist()
    rows = table.drop_columns(list(short)).to_pylist() if short else table.to_pylist()
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    if short:
        names = list(short)
        for i, row in enumerate(rows):
            for name in names:
                row[name] = short[name][i]
    return [dumps(row).encode() for row in rows]


def encode_arrow(table: pa.Table | pa.RecordBatch, schema: EventSchema | None = None) -> bytes:
    """Events as one Arrow IPC stream message value (cast to ``schema``'s arrow schema when given)."""
    if schema is not None:
        target = schema.arrow_schema()
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = table.select(target.names).cast(target)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        if isinstance(table, pa.RecordBatch):
            writer.write_batch(table)
        else:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()


def reject_of(
    m: MessageLike,
    reason: str,
    detail: str,
    encoding: str,
    raw: bytes | None = None,
    event_index: int | None = None,
) -> Reject:
    """The :class:`Reject` of message ``m`` (its value unchanged unless ``raw`` is given: one bad row)."""
    return Reject(
        raw=(m.value or b"") if raw is None else raw,
        reason=reason,
        detail=detail,
        topic=m.topic,
        partition=int(m.partition),
        offset=int(m.offset),
        timestamp_ms=int(m.timestamp if m.timestamp is not None else -1),
        key=m.key,
        event_index=event_index,
        encoding=encoding,
    )


def header_reject(m: MessageLike, enc: bytes, schema_version: int) -> Reject:
    """The reject of a message whose headers rule it out (``enc`` from :func:`message_encoding`)."""
    h = m.headers
    if enc == b"!pipeline":
        got = header_value(h, PIPELINE_HEADER) or b""
        return reject_of(
            m, WRONG_PIPELINE, f"message of pipeline {got.decode(errors='replace')!r}", message_encoding(h)
        )
    if enc == b"!version":
        got = header_value(h, VERSION_HEADER) or b""
        try:
            int(got)
        except ValueError:
            return reject_of(m, BAD_HEADER, f"schema version header {got!r} is not an int", JSON)
        return reject_of(m, WRONG_SCHEMA_VERSION, f"schema version {got.decode()} != {schema_version}", JSON)
    return reject_of(m, UNKNOWN_ENCODING, f"encoding header {enc[:40]!r} is not json or arrow", JSON)
