"""Decoding events that validates and never raises (the encodings themselves: :mod:`event_wire`).

``decode(messages, schema)`` returns a :class:`DecodedBatch`: the valid events as one ``pa.RecordBatch`` in
``schema.arrow_schema()`` (message order; events of one Arrow message in batch order), their provenance
(partition, offset, broker timestamp ms, index within the message), and a list of :class:`Reject` (raw bytes,
reason code, detail, source topic/partition/offset). A whole message that cannot be read (not JSON, truncated
Arrow, wrong header, ...) is one reject carrying the message's raw bytes unchanged; a bad row inside an
otherwise good Arrow message is one reject carrying that row alone as a one-row Arrow IPC stream (its
``event_index`` says which row), while the message's other rows stay valid.
Invariant: ``events_in == num_valid + len(rejects)`` where ``events_in`` counts one event per JSON message,
the rows of each readable Arrow message, and one per unreadable message.

Speed: JSON messages of the common shape are read by one compiled pass straight into columns
(:mod:`event_json_fast`), others are parsed together by ``pyarrow.json`` (newline-joined); both are checked
with vectorized Arrow compute; only when the bulk parse fails (a malformed message in the chunk) is the
chunk parsed one message at a time in Python to find which messages are bad and why. Reasons always come
from one Python validator (:func:`validate_event`), so they do not depend on which path ran.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN, EventSchema
from rnnstream.workers.event_arrow_decode import decode_arrow_message, decode_arrow_together
from rnnstream.workers.event_json_fast import FastJsonColumns
from rnnstream.workers.event_validation import bad_rows, validate_event
from rnnstream.workers.event_wire import (
    ARROW,
    DEFAULT_MAX_ARROW_BYTES,
    DEFAULT_MAX_FUTURE_MS,
    DEFAULT_MAX_JSON_BYTES,
    ENCODING_HEADER,
    INVALID_EVENT,
    JSON,
    NOT_JSON,
    PIPELINE_HEADER,
    REASONS,
    TOO_LARGE,
    VERSION_HEADER,
    DecodedBatch,
    MessageLike,
    RawMessage,
    Reject,
    encode_arrow,
    event_to_json,
    header_reject,
    header_value,
    message_encoding,
    message_headers,
    message_timestamps,
    reject_of,
    table_to_json,
)

# the wire vocabulary decoding speaks, importable from here too
__all__ = [
    "ARROW",
    "ENCODING_HEADER",
    "JSON",
    "PIPELINE_HEADER",
    "REASONS",
    "VERSION_HEADER",
    "DecodedBatch",
    "EventDecoder",
    "RawMessage",
    "Reject",
    "decode",
    "decoder_for",
    "encode_arrow",
    "event_to_json",
    "header_value",
    "message_encoding",
    "message_headers",
    "table_to_json",
    "validate_event",
]


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
        self._fast_json: FastJsonColumns | None = None
        try:
            self._fast_json = FastJsonColumns(self._parse_schema, dict(schema.vectors))
        except ValueError:  # a field type the compiled reader does not know: pyarrow.json alone
            self._fast_json = None

    # -- public

    def decode(self, messages: Sequence[MessageLike], now_ms: int | None = None) -> DecodedBatch:
        """Validate and decode ``messages``; never raises on bad input.

        "In the future" is judged against each message's own timestamp (its record timestamp in the log),
        so replaying the same messages after a crash accepts and rejects exactly the same events; a message
        without a timestamp is judged against ``now_ms`` (default: the wall clock).
        """
        ts = message_timestamps(messages)
        now = np.where(ts >= 0, ts, int(time.time() * 1000) if now_ms is None else int(now_ms))
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
                    rejects.append(reject_of(m, TOO_LARGE, f"{len(value)} bytes > limit {max_json}", JSON))
                    continue
                json_idx.append(i)
                json_vals.append(value)
            elif enc == b"arrow":
                arrow_idx.append(i)
            else:
                rejects.append(header_reject(m, enc, self.schema.version))
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
        together = self._decode_arrow_together(messages, arrow_idx, now) if len(arrow_idx) > 1 else None
        if together is not None:  # every Arrow message clean and of one schema: checked as one table
            events_in += together[0].num_rows
            parts.append(together)
            arrow_idx = []
        for i in arrow_idx:
            try:
                n_in, part, arrow_rejects = self._decode_arrow(messages[i], int(now[i]))
            except Exception as exc:  # never raise into a worker: an unforeseen failure is a reject
                detail = f"cannot decode Arrow message: {type(exc).__name__}: {exc}"[:300]
                n_in, part, arrow_rejects = 1, None, [reject_of(messages[i], INVALID_EVENT, detail, ARROW)]
            events_in += n_in
            rejects += arrow_rejects
            if part is not None and part.num_rows:
                positions = part.column(part.num_columns - 1).to_numpy().astype(np.int32)
                batch = pa.RecordBatch.from_arrays(part.columns[:-1], schema=self.arrow_schema)
                parts.append((batch, np.full(batch.num_rows, i, dtype=np.int64), positions))
        return DecodedBatch.of_parts(messages, parts, rejects, events_in, self.arrow_schema)

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
        cols = None
        if fast_ok and self._fast_json is not None:  # the common shape: one compiled pass, no pyarrow.json
            cols = self._fast_json.columns(buf, starts, lens)
        if cols is None and fast_ok:
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
        if cols is None and table is None:
            return self._decode_json_slow(messages, idx, vals, now)
        if cols is None:
            cols = {name: table.column(name).combine_chunks() for name in self._parse_schema.names}
        bad = bad_rows(cols, self.schema, now, self.max_future_ms)
        rejects: list[Reject] = []
        idx_arr = np.asarray(idx, dtype=np.int64)
        if bad is not None:
            for j in np.flatnonzero(bad):
                m = messages[idx[j]]
                reason, detail = self._json_reason(vals[j], int(now[j]))
                rejects.append(reject_of(m, reason, detail, JSON))
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
                rejects.append(reject_of(messages[i], INVALID_EVENT, detail, JSON))
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
                rejects.append(reject_of(messages[i], NOT_JSON, f"not JSON: {exc}"[:300], JSON))
                continue
            res = validate_event(event, self.schema, int(now[j]), self.max_future_ms)
            if isinstance(res, tuple):
                rejects.append(reject_of(messages[i], res[0], res[1], JSON))
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

    # -- Arrow (:mod:`event_arrow_decode`)

    def _decode_arrow_together(
        self, messages: Sequence[MessageLike], idx: list[int], now: np.ndarray
    ) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray] | None:
        return decode_arrow_together(self, messages, idx, now)

    def _decode_arrow(self, m: MessageLike, now: int) -> tuple[int, pa.RecordBatch | None, list[Reject]]:
        return decode_arrow_message(self, m, now)

    # -- shared vectorized checks and assembly

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


@lru_cache(maxsize=32)
def decoder_for(schema: EventSchema) -> EventDecoder:
    """A cached decoder with default limits for ``schema``."""
    return EventDecoder(schema)


def decode(messages: Sequence[MessageLike], schema: EventSchema, now_ms: int | None = None) -> DecodedBatch:
    """Validate and decode ``messages`` against ``schema`` (see the module docstring); never raises."""
    return decoder_for(schema).decode(messages, now_ms=now_ms)
