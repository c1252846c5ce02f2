"""Event encodings on the wire, and decoding that validates and never raises.

Two encodings, told apart by the ``rnnstream-encoding`` message header:

- ``json``: one event per message, a JSON object ``{"key": str, "time": int epoch ms, <numeric>: number,
  <vector>: [numbers], <categorical>: str, "label": int|null}``; unknown fields are ignored. A message with no
  encoding header is read as JSON, so any producer can write events.
- ``arrow``: one Arrow IPC stream per message holding a record batch of many events (of many keys) in the
  pipeline's arrow schema: the fast path.

Headers ``rnnstream-pipeline`` and ``rnnstream-schema-version`` name the schema the producer used; when
present they must match the consumer's.

``decode(messages, schema)`` returns a :class:`DecodedBatch`: the valid events as one ``pa.RecordBatch`` in
``schema.arrow_schema()`` (message order; events of one Arrow message in batch order), their provenance
(partition, offset, broker timestamp ms, index within the message), and a list of :class:`Reject` (raw bytes,
reason code, detail, source topic/partition/offset). A whole message that cannot be read (not JSON, truncated
Arrow, wrong header, ...) is one reject carrying the message's raw bytes unchanged; a bad row inside an
otherwise good Arrow message is one reject carrying that row alone as a one-row Arrow IPC stream (its
``event_index`` says which row), while the message's other rows stay valid.
Invariant: ``events_in == num_valid + len(rejects)`` where ``events_in`` counts one event per JSON message,
the rows of each readable Arrow message, and one per unreadable message.

Speed: JSON messages are parsed together by ``pyarrow.json`` (newline-joined) and checked with vectorized
Arrow compute; only when that bulk parse fails (a malformed message in the chunk) is the chunk parsed one
message at a time in Python to find which messages are bad and why. Reasons always come from one Python
validator (:func:`validate_event`), so they do not depend on which path ran.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN, EventSchema

ENCODING_HEADER = "rnnstream-encoding"
PIPELINE_HEADER = "rnnstream-pipeline"
VERSION_HEADER = "rnnstream-schema-version"
JSON = "json"
ARROW = "arrow"
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

    def check_invariant(self) -> None:
        """Raise AssertionError unless events in == valid + rejected."""
        if self.events_in != self.num_valid + len(self.rejects):
            raise AssertionError(
                f"events in {self.events_in} != valid {self.num_valid} + rejected {len(self.rejects)}"
            )


# ----------------------------------------------------------------------------------------------- encoding


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


# ----------------------------------------------------------------------------------------------- decoding


class _Problem(Exception):
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
    except _Problem as p:
        return (p.reason, p.detail)


def _get(event: Mapping[str, Any], name: str) -> Any:
    if name not in event:
        raise _Problem(MISSING_FIELD, f"field {name!r} is missing")
    v = event[name]
    if v is None:
        raise _Problem(NULL_VALUE, f"field {name!r} is null")
    return v


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Problem(WRONG_TYPE, f"field {name!r} must be a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # an integer too large for a double
        raise _Problem(NOT_FINITE, f"field {name!r} is too large for a double") from None
    if not math.isfinite(f):
        raise _Problem(NOT_FINITE, f"field {name!r} is {f}")
    return f


def _normalize(event: Any, schema: EventSchema, now_ms: int, max_future_ms: int) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise _Problem(NOT_OBJECT, f"an event must be a JSON object, got {type(event).__name__}")
    out: dict[str, Any] = {}
    key = _get(event, KEY_COLUMN)
    if not isinstance(key, str):
        raise _Problem(WRONG_TYPE, f"field 'key' must be a string, got {type(key).__name__}")
    if not key:
        raise _Problem(EMPTY_KEY, "field 'key' is empty")
    _check_text("key", key)
    out[KEY_COLUMN] = key
    t = _get(event, TIME_COLUMN)
    if isinstance(t, bool) or not isinstance(t, int):
        raise _Problem(WRONG_TYPE, f"field 'time' must be an integer (epoch ms), got {type(t).__name__}")
    if t < 0:
        raise _Problem(TIME_OUT_OF_RANGE, f"time {t} ms is before 1970")
    if t > now_ms + max_future_ms:
        raise _Problem(TIME_OUT_OF_RANGE, f"time {t} ms is more than {max_future_ms} ms in the future")
    out[TIME_COLUMN] = t
    for name in schema.numeric:
        f = _number(name, _get(event, name))
        if abs(f) > _F32_MAX:
            raise _Problem(NOT_FINITE, f"field {name!r} = {f} overflows float32")
        out[name] = f
    for name, size in schema.vectors:
        v = _get(event, name)
        if not isinstance(v, list):
            raise _Problem(WRONG_TYPE, f"field {name!r} must be a list of {size} numbers")
        if len(v) != size:
            raise _Problem(WRONG_VECTOR_LENGTH, f"field {name!r} has {len(v)} values, expected {size}")
        vals = []
        for i, x in enumerate(v):
            if x is None:
                raise _Problem(NULL_VALUE, f"field {name!r}[{i}] is null")
            f = _number(f"{name}[{i}]", x)
            if abs(f) > _F32_MAX:
                raise _Problem(NOT_FINITE, f"field {name}[{i}] = {f} overflows float32")
            vals.append(f)
        out[name] = vals
    for name, _vocab in schema.categorical:
        v = _get(event, name)
        if not isinstance(v, str):
            raise _Problem(WRONG_TYPE, f"field {name!r} must be a string, got {type(v).__name__}")
        _check_text(name, v)
        out[name] = v
    if schema.has_label:
        lab = event.get(LABEL_COLUMN)
        if lab is not None and (isinstance(lab, bool) or not isinstance(lab, int)):
            raise _Problem(WRONG_TYPE, f"field 'label' must be an integer or null, got {type(lab).__name__}")
        if lab is not None and not -(2**63) <= lab < 2**63:
            raise _Problem(WRONG_TYPE, "field 'label' does not fit in int64")
        out[LABEL_COLUMN] = lab
    return out


def _message_times(messages: Sequence[MessageLike], fallback_ms: int) -> np.ndarray:
    """Each message's record timestamp (ms), or ``fallback_ms`` where it has none."""
    ts = [getattr(m, "timestamp", None) for m in messages]
    out = np.fromiter((fallback_ms if t is None or t < 0 else t for t in ts), np.int64, count=len(ts))
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
        raise _Problem(
            WRONG_SCHEMA, f"column {name!r} has Arrow type {typ}, which events of this schema cannot have"
        )


def _check_text(name: str, v: str) -> None:
    try:
        v.encode()
    except UnicodeEncodeError:  # e.g. a lone surrogate escape "\\ud800" in JSON
        raise _Problem(INVALID_TEXT, f"field {name!r} is not valid Unicode text") from None


def header_value(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the first Kafka header called ``name``, or None (headers are a list of pairs)."""
    if headers:
        for k, v in headers:
            if k == name:
                return v
    return None


class EventDecoder:
    """Decodes messages of one pipeline schema (keeps the parse options and target schema ready)."""

    def __init__(
        self,
        schema: EventSchema,
        *,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        max_arrow_bytes: int = DEFAULT_MAX_ARROW_BYTES,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    ) -> None:
        self.schema = schema
        self.arrow_schema = schema.arrow_schema()
        self.max_json_bytes = max_json_bytes
        self.max_arrow_bytes = max_arrow_bytes
        self.max_future_ms = max_future_ms
        self._json_headers = message_headers(schema, JSON)
        self._arrow_headers = message_headers(schema, ARROW)
        self._pipeline = schema.pipeline.encode()
        self._version = str(schema.version).encode()
        parse_fields = [pa.field(KEY_COLUMN, pa.string()), pa.field(TIME_COLUMN, pa.int64())]
        parse_fields += [pa.field(n, pa.float64()) for n in schema.numeric]
        parse_fields += [pa.field(n, pa.list_(pa.float64())) for n, _ in schema.vectors]
        parse_fields += [pa.field(n, pa.string()) for n, _ in schema.categorical]
        if schema.has_label:
            parse_fields.append(pa.field(LABEL_COLUMN, pa.int64()))
        self._parse_schema = pa.schema(parse_fields)
        self._parse_options = pj.ParseOptions(
            explicit_schema=self._parse_schema, unexpected_field_behavior="ignore"
        )

    # -- public

    def decode(self, messages: Sequence[MessageLike], now_ms: int | None = None) -> DecodedBatch:
        """Validate and decode ``messages``; never raises on bad input.

        "In the future" is judged against each message's own timestamp (its record timestamp in the log),
        so replaying the same messages after a crash accepts and rejects exactly the same events; a message
        without a timestamp is judged against ``now_ms`` (default: the wall clock).
        """
        now = _message_times(messages, int(time.time() * 1000) if now_ms is None else int(now_ms))
        rejects: list[Reject] = []
        json_idx: list[int] = []
        json_vals: list[bytes] = []
        arrow_idx: list[int] = []
        pipeline, version, max_json = self._pipeline, self._version, self.max_json_bytes
        jh, ah = self._json_headers, self._arrow_headers
        n = len(messages)
        values = list(map(attrgetter("value"), messages))
        if (
            n
            and list(map(attrgetter("headers"), messages)).count(jh) == n
            and None not in values
            and max(map(len, values)) <= max_json
        ):
            # the common case, checked at C speed: all JSON of this schema from an rnnstream producer
            json_idx, json_vals = list(range(n)), values
            messages_iter: Sequence[MessageLike] = ()
        else:
            messages_iter = messages
        for i, m in enumerate(messages_iter):
            value = m.value
            headers = m.headers
            if headers == jh:  # the common case: an rnnstream JSON producer of this schema
                enc = b"json"
            elif headers == ah:
                enc = b"arrow"
            else:
                enc = None
                if headers:
                    for k, v in headers:
                        if k == ENCODING_HEADER:
                            enc = v
                        elif k == PIPELINE_HEADER and v != pipeline:
                            enc = b"!pipeline"
                            break
                        elif k == VERSION_HEADER and v != version:
                            enc = b"!version"
                            break
            if value is None:
                value = b""
            if enc is None or enc == b"json":
                if len(value) > max_json:
                    rejects.append(self._reject(m, TOO_LARGE, f"{len(value)} bytes > limit {max_json}", JSON))
                    continue
                json_idx.append(i)
                json_vals.append(value)
            elif enc == b"arrow":
                arrow_idx.append(i)
            else:
                rejects.append(self._header_reject(m, enc))
        events_in = len(rejects)
        parts: list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]] = []  # (batch, message idx, event idx)
        if json_idx:
            batch, rows_ok, json_rejects = self._decode_json_safe(
                messages, json_idx, json_vals, now[json_idx]
            )
            events_in += len(json_idx)
            rejects += json_rejects
            if batch.num_rows:
                parts.append((batch, rows_ok, np.zeros(batch.num_rows, dtype=np.int32)))
        for i in arrow_idx:
            try:
                n_in, part, arrow_rejects = self._decode_arrow(messages[i], int(now[i]))
            except Exception as exc:  # never raise into a worker: an unforeseen failure is a reject
                detail = f"cannot decode Arrow message: {type(exc).__name__}: {exc}"[:300]
                n_in, part, arrow_rejects = 1, None, [self._reject(messages[i], INVALID_EVENT, detail, ARROW)]
            events_in += n_in
            rejects += arrow_rejects
            if part is not None and part.num_rows:
                positions = part.column(part.num_columns - 1).to_numpy().astype(np.int32)
                batch = pa.RecordBatch.from_arrays(part.columns[:-1], schema=self.arrow_schema)
                parts.append((batch, np.full(batch.num_rows, i, dtype=np.int64), positions))
        return self._assemble(messages, parts, rejects, events_in)

    # -- JSON

    def _decode_json(
        self, messages: Sequence[MessageLike], idx: list[int], vals: list[bytes], now: np.ndarray
    ) -> tuple[pa.RecordBatch, np.ndarray, list[Reject]]:
        """``now``: each value's reference time for the future check (ms, aligned with ``vals``)."""
        # Fast path only for values that are a single-line-able object: first byte '{', last '}'.
        # (Newlines can only be whitespace in valid JSON, so replacing them is safe.)
        table = None
        lens = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
        joined = b"\n".join(vals) if lens.min() > 0 else b""
        fast_ok = bool(joined)
        if fast_ok:
            buf = np.frombuffer(joined, dtype=np.uint8)
            starts = np.zeros(len(vals), dtype=np.int64)
            np.cumsum(lens[:-1] + 1, out=starts[1:])
            fast_ok = bool((buf[starts] == 0x7B).all() and (buf[starts + lens - 1] == 0x7D).all())  # { }
        if fast_ok:
            if b"\r" in joined or joined.count(b"\n") != len(vals) - 1:
                joined = b"\n".join(v.replace(b"\n", b" ").replace(b"\r", b" ") for v in vals)
            try:
                table = pj.read_json(
                    io.BytesIO(joined),
                    read_options=pj.ReadOptions(
                        use_threads=False, block_size=max(1 << 18, self.max_json_bytes + 2)
                    ),
                    parse_options=self._parse_options,
                )
            except (pa.ArrowException, ValueError):
                table = None
            if table is not None and table.num_rows != len(vals):
                table = None
        if table is None:
            return self._decode_json_slow(messages, idx, vals, now)
        cols = {name: table.column(name).combine_chunks() for name in self._parse_schema.names}
        bad = self._bad_rows(cols, now)
        rejects: list[Reject] = []
        idx_arr = np.asarray(idx, dtype=np.int64)
        if bad is not None:
            for j in np.flatnonzero(bad):
                m = messages[idx[j]]
                reason, detail = self._json_reason(vals[j], int(now[j]))
                rejects.append(self._reject(m, reason, detail, JSON))
            keep = pa.array(~bad)
            cols = {k: pc.filter(c, keep) for k, c in cols.items()}
            idx_arr = idx_arr[~bad]
        return self._to_batch(cols), idx_arr, rejects

    def _decode_json_safe(
        self, messages: Sequence[MessageLike], idx: list[int], vals: list[bytes], now: np.ndarray
    ) -> tuple[pa.RecordBatch, np.ndarray, list[Reject]]:
        """_decode_json, and if something unforeseen raises, one message at a time (never raises)."""
        try:
            return self._decode_json(messages, idx, vals, now)
        except Exception:
            if len(idx) == 1:
                raise
        batches, oks, rejects = [], [], []
        for j, (i, v) in enumerate(zip(idx, vals, strict=True)):
            try:
                b, ok, rej = self._decode_json_slow(messages, [i], [v], now[j : j + 1])
            except Exception as exc:
                detail = f"cannot decode JSON event: {type(exc).__name__}: {exc}"[:300]
                rejects.append(self._reject(messages[i], INVALID_EVENT, detail, JSON))
                continue
            rejects += rej
            if b.num_rows:
                batches.append(b)
                oks.append(ok)
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=self.arrow_schema), np.zeros(0, np.int64), rejects
        table = pa.Table.from_batches(batches, schema=self.arrow_schema).combine_chunks()
        return table.to_batches()[0], np.concatenate(oks), rejects

    def _json_reason(self, value: bytes, now: int) -> tuple[str, str]:
        try:
            event = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            return (NOT_JSON, f"not JSON: {exc}"[:300])
        res = validate_event(event, self.schema, now, self.max_future_ms)
        if isinstance(res, tuple):
            return res
        return (INVALID_EVENT, "event failed the bulk checks")  # validators disagree; keep it out

    def _decode_json_slow(
        self, messages: Sequence[MessageLike], idx: list[int], vals: list[bytes], now: np.ndarray
    ) -> tuple[pa.RecordBatch, np.ndarray, list[Reject]]:
        rows: list[dict[str, Any]] = []
        ok: list[int] = []
        rejects: list[Reject] = []
        for j, (i, v) in enumerate(zip(idx, vals, strict=True)):
            try:
                event = json.loads(v)
            except (ValueError, UnicodeDecodeError) as exc:
                rejects.append(self._reject(messages[i], NOT_JSON, f"not JSON: {exc}"[:300], JSON))
                continue
            res = validate_event(event, self.schema, int(now[j]), self.max_future_ms)
            if isinstance(res, tuple):
                rejects.append(self._reject(messages[i], res[0], res[1], JSON))
            else:
                rows.append(res)
                ok.append(i)
        if rows:
            cols = {
                name: pa.array([r.get(name) for r in rows], type=self._parse_schema.field(name).type)
                for name in self._parse_schema.names
            }
            batch = self._to_batch(cols)
        else:
            batch = pa.RecordBatch.from_pylist([], schema=self.arrow_schema)
        return batch, np.asarray(ok, dtype=np.int64), rejects

    # -- Arrow

    def _decode_arrow(self, m: MessageLike, now: int) -> tuple[int, pa.RecordBatch | None, list[Reject]]:
        """Returns (events in, valid rows + trailing event-index column, rejects)."""
        value = m.value or b""
        if len(value) > self.max_arrow_bytes:
            return (
                1,
                None,
                [self._reject(m, TOO_LARGE, f"{len(value)} bytes > {self.max_arrow_bytes}", ARROW)],
            )
        try:
            table = pa.ipc.open_stream(value).read_all()
        except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
            looks_ipc = value[:4] == b"\xff\xff\xff\xff"
            reason = TRUNCATED_ARROW if looks_ipc else NOT_ARROW
            return 1, None, [self._reject(m, reason, f"cannot read Arrow IPC: {exc}"[:300], ARROW)]
        meta = table.schema.metadata or {}
        their_pipeline = meta.get(b"rnnstream.pipeline")
        if their_pipeline is not None and their_pipeline != self._pipeline:
            detail = f"batch schema is of pipeline {their_pipeline.decode(errors='replace')!r}"
            return 1, None, [self._reject(m, WRONG_PIPELINE, detail, ARROW)]
        their_version = meta.get(b"rnnstream.schema_version")
        if their_version is not None and their_version != self._version:
            detail = f"batch schema version {their_version.decode(errors='replace')}"
            return 1, None, [self._reject(m, WRONG_SCHEMA_VERSION, detail, ARROW)]
        try:
            cols = self._conform(table)
        except _Problem as p:
            return 1, None, [self._reject(m, p.reason, p.detail, ARROW)]
        n = table.num_rows
        bad = self._bad_rows(cols, now)
        rejects: list[Reject] = []
        positions = pa.array(np.arange(n, dtype=np.int32))
        if bad is not None:
            src = table.combine_chunks()
            for j in np.flatnonzero(bad):
                row = {name: _py(cols[name][j]) for name in cols}
                res = validate_event(row, self.schema, now, self.max_future_ms)
                reason, detail = res if isinstance(res, tuple) else (INVALID_EVENT, "row failed checks")
                raw = encode_arrow(src.slice(int(j), 1))
                rejects.append(self._reject(m, reason, detail, ARROW, raw=raw, event_index=int(j)))
            keep = pa.array(~bad)
            cols = {k: pc.filter(c, keep) for k, c in cols.items()}
            positions = pc.filter(positions, keep)
        batch = self._to_batch(cols)
        out = pa.RecordBatch.from_arrays([*batch.columns, positions], names=[*batch.schema.names, "__idx"])
        return n, out, rejects

    def _conform(self, table: pa.Table) -> dict[str, pa.Array]:
        """Arrow columns cast to the parse schema's types (vectors as list<float64>), or _Problem."""
        cols: dict[str, pa.Array] = {}
        names = set(table.schema.names)
        for f in self._parse_schema:
            if f.name not in names:
                if f.name == LABEL_COLUMN:
                    cols[f.name] = pa.nulls(table.num_rows, pa.int64())
                    continue
                raise _Problem(WRONG_SCHEMA, f"column {f.name!r} is missing")
            col = table.column(f.name).combine_chunks()
            _check_arrow_type(f.name, col.type, self.schema)
            try:
                if f.name == TIME_COLUMN and pa.types.is_timestamp(col.type):
                    col = pc.cast(col, pa.timestamp("ms"), safe=False).cast(pa.int64())
                elif pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
                    col = pc.cast(col, pa.list_(pa.float64()))
                else:
                    col = pc.cast(col, f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise _Problem(WRONG_SCHEMA, f"column {f.name!r}: {exc}"[:300]) from exc
            cols[f.name] = col
        return cols

    # -- shared vectorized checks and assembly

    def _bad_rows(self, cols: Mapping[str, pa.Array], now: int | np.ndarray) -> np.ndarray | None:
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
        latest = now + self.max_future_ms
        latest = pa.array(latest, pa.int64()) if isinstance(latest, np.ndarray) else latest
        mark(pc.fill_null(pc.or_(pc.less(t, 0), pc.greater(t, latest)), False))
        for name in self.schema.numeric:  # NaN, inf and float32 overflow (the model reads float32)
            mark(pc.fill_null(pc.invert(pc.less_equal(pc.abs(cols[name]), _F32_MAX)), False))
        for name, size in self.schema.vectors:
            col = cols[name]
            lengths = pc.fill_null(pc.list_value_length(col), size)
            wrong_len = pc.not_equal(lengths, size).to_numpy(zero_copy_only=False)
            mark(wrong_len)
            values = col.values  # whole child array; offsets index into it
            if len(values):
                v = values.to_numpy(zero_copy_only=False)
                with np.errstate(invalid="ignore"):
                    elem_bad = ~(np.abs(v) <= _F32_MAX)  # NaN, inf, null->nan, float32 overflow
                if elem_bad.any():
                    offsets = col.offsets.to_numpy()
                    cs = np.concatenate([[0], np.cumsum(elem_bad, dtype=np.int64)])
                    mark((cs[offsets[1:]] - cs[offsets[:-1]]) > 0)
        return bad if any_bad else None

    def _to_batch(self, cols: Mapping[str, pa.Array]) -> pa.RecordBatch:
        arrays = [cols[KEY_COLUMN], cols[TIME_COLUMN].cast(pa.timestamp("ms"))]
        arrays += [cols[n] for n in self.schema.numeric]
        for n, size in self.schema.vectors:
            values = cols[n].flatten().cast(pa.float32())
            arrays.append(pa.FixedSizeListArray.from_arrays(values, size))
        arrays += [cols[n] for n, _ in self.schema.categorical]
        if self.schema.has_label:
            arrays.append(cols[LABEL_COLUMN])
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)

    def _assemble(
        self,
        messages: Sequence[MessageLike],
        parts: list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]],
        rejects: list[Reject],
        events_in: int,
    ) -> DecodedBatch:
        if not parts:
            empty = pa.RecordBatch.from_pylist([], schema=self.arrow_schema)
            z32, z64 = np.zeros(0, np.int32), np.zeros(0, np.int64)
            return DecodedBatch(empty, z32, z64, z64.copy(), z32.copy(), rejects, events_in, len(messages))
        if len(parts) == 1:
            batch, msg_idx, ev_idx = parts[0]
        else:
            msg_idx = np.concatenate([p[1] for p in parts])
            ev_idx = np.concatenate([p[2] for p in parts])
            table = pa.Table.from_batches([p[0] for p in parts], schema=self.arrow_schema)
            order = np.lexsort((ev_idx, msg_idx))
            if not np.array_equal(order, np.arange(len(order))):
                table = table.take(pa.array(order))
                msg_idx, ev_idx = msg_idx[order], ev_idx[order]
            batch = table.combine_chunks().to_batches()[0]
        partition, offset, ts = _provenance(messages, msg_idx)
        return DecodedBatch(batch, partition, offset, ts, ev_idx, rejects, events_in, len(messages))

    # -- rejects

    def _reject(
        self,
        m: MessageLike,
        reason: str,
        detail: str,
        encoding: str,
        raw: bytes | None = None,
        event_index: int | None = None,
    ) -> Reject:
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

    def _header_reject(self, m: MessageLike, enc: bytes) -> Reject:
        h = m.headers
        if enc == b"!pipeline":
            got = header_value(h, PIPELINE_HEADER) or b""
            return self._reject(
                m, WRONG_PIPELINE, f"message of pipeline {got.decode(errors='replace')!r}", _enc_name(h)
            )
        if enc == b"!version":
            got = header_value(h, VERSION_HEADER) or b""
            try:
                int(got)
            except ValueError:
                return self._reject(m, BAD_HEADER, f"schema version header {got!r} is not an int", JSON)
            return self._reject(
                m, WRONG_SCHEMA_VERSION, f"schema version {got.decode()} != {self.schema.version}", JSON
            )
        return self._reject(m, UNKNOWN_ENCODING, f"encoding header {enc[:40]!r} is not json or arrow", JSON)


def _enc_name(headers: Sequence[tuple[str, bytes]] | None) -> str:
    return ARROW if header_value(headers, ENCODING_HEADER) == b"arrow" else JSON


def _py(scalar: pa.Scalar) -> Any:
    return scalar.as_py()


def _provenance(
    messages: Sequence[MessageLike], msg_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(messages)
    part = np.fromiter(map(attrgetter("partition"), messages), dtype=np.int32, count=n)
    off = np.fromiter(map(attrgetter("offset"), messages), dtype=np.int64, count=n)
    try:
        ts = np.fromiter(map(attrgetter("timestamp"), messages), dtype=np.int64, count=n)
    except TypeError:  # a message without a timestamp
        ts = np.fromiter((-1 if m.timestamp is None else m.timestamp for m in messages), np.int64, count=n)
    return part[msg_idx], off[msg_idx], ts[msg_idx]


@lru_cache(maxsize=32)
def decoder_for(schema: EventSchema) -> EventDecoder:
    """A cached decoder with default limits for ``schema``."""
    return EventDecoder(schema)


def decode(messages: Sequence[MessageLike], schema: EventSchema, now_ms: int | None = None) -> DecodedBatch:
    """Validate and decode ``messages`` against ``schema`` (see the module docstring); never raises."""
    return decoder_for(schema).decode(messages, now_ms=now_ms)
