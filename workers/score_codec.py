"""Scores on the wire: what a scoring worker writes to ``<pipeline>.scores`` and how a reader gets them back.

Every score carries where its event came from (source topic, partition, offset, and the row within an Arrow
message) and the model version that made it, so a verifier can check "every event scored exactly once" and
a reader can tell versions apart across a hot swap.

- ``json``: one message per event: ``{"key", "time" (epoch ms), <output names>..., "model_version",
  "topic", "partition", "offset", "index"}``; the message key is the stream key.
- ``arrow``: one Arrow IPC stream per message holding the scores of many events (columns ``key``, ``time``
  (timestamp ms), one float32 column per output name, ``model_version``, ``topic``, ``partition``,
  ``offset``, ``index``).

An Arrow message carries the header ``rnnstream-encoding: arrow`` (same header as events); a JSON message
carries no header, which means JSON (the events' rule too): a header on every score made kafka-python's
``send`` ~45% more expensive per record, the largest cost of a JSON score after the send itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.workers.event_codec import ARROW, ENCODING_HEADER, JSON, header_value

PROVENANCE_COLUMNS = ("model_version", "topic", "partition", "offset", "index")
ARROW_HEADERS = [(ENCODING_HEADER, b"arrow")]


def scores_to_json_array(
    keys: Sequence[str] | pa.Array,
    times_ms: np.ndarray,
    outputs: np.ndarray,
    output_names: Sequence[str],
    model_version: str,
    topic: str,
    partition: int,
    offsets: np.ndarray,
    indexes: np.ndarray,
) -> pa.BinaryArray:
    """One JSON message value per scored event, as an Arrow binary array (what the bulk send takes).

    Built column-wise by Arrow's string kernels (no Python object per field): a key is written as
    ``json.dumps`` writes it (keys needing an escape go through ``json.dumps`` itself), an output as the
    shortest decimal that reads back to the same double (its float32 value exactly).
    """
    keys = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys
    if len(keys) == 0:
        return pa.array([], pa.binary())
    if not pa.types.is_string(keys.type):
        keys = keys.cast(pa.string())
    tail = (
        f',"model_version":{json.dumps(model_version)},"topic":{json.dumps(topic)},'
        f'"partition":{int(partition)},"offset":'
    )
    parts: list = ['{"key":', json_strings(keys), ',"time":', _text(times_ms.astype(np.int64, copy=False))]
    for j, name in enumerate(output_names):
        parts += [f",{json.dumps(name)}:", _float_text(outputs[:, j])]
    parts += [tail, _text(offsets.astype(np.int64, copy=False)), ',"index":', _text(indexes), "}"]
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary())


_NEEDS_ESCAPE = r"[^\x20\x21\x23-\x5b\x5d-\x7e]"  # what json.dumps escapes: '"', '\\', control, non-ASCII


def json_strings(keys: pa.Array) -> pa.Array:
    """Each string as a JSON string literal, byte for byte what ``json.dumps`` writes (nulls stay null)."""
    quoted = pc.binary_join_element_wise('"', keys, '"', "")
    escape = pc.match_substring_regex(keys, _NEEDS_ESCAPE)
    if escape.true_count:
        rows = np.flatnonzero(escape.to_numpy(zero_copy_only=False))
        texts = quoted.to_pylist()
        for r in rows.tolist():
            texts[r] = json.dumps(keys[r].as_py())
        quoted = pa.array(texts, pa.string())
    return quoted


def _text(values: np.ndarray) -> pa.Array:
    """Integers as their decimal text."""
    return pc.cast(pa.array(values), pa.string())


def _float_text(values: np.ndarray) -> pa.Array:
    """Floats (as doubles) as the shortest text that reads back to the same double, always a JSON float:
    a whole number gets ``.0`` (``0.0``, not ``0``, so readers keep the column a float)."""
    text = pc.cast(pa.array(values.astype(np.float64)), pa.string())
    whole = pc.match_substring_regex(text, "^-?[0-9]+$")
    if whole.true_count:
        text = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
    finite = np.isfinite(values)
    if not finite.all():  # as json.dumps writes them (Arrow's 'nan'/'inf' would not parse at all)
        words = np.where(np.isnan(values), "NaN", np.where(values > 0, "Infinity", "-Infinity"))
        text = pc.if_else(pa.array(~finite), pa.array(words, pa.string()), text)
    return text


def scores_to_arrow(
    keys: pa.Array,
    times_ms: np.ndarray,
    outputs: np.ndarray,
    output_names: Sequence[str],
    model_version: str,
    topic: str,
    partition: int,
    offsets: np.ndarray,
    indexes: np.ndarray,
) -> bytes:
    """The scores of many events as one Arrow IPC stream message value."""
    n = len(times_ms)
    arrays = [keys, pa.array(times_ms.astype(np.int64), type=pa.int64()).cast(pa.timestamp("ms"))]
    names = ["key", "time"]
    for j, name in enumerate(output_names):
        arrays.append(pa.array(np.ascontiguousarray(outputs[:, j], dtype=np.float32)))
        names.append(name)
    arrays += [
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([model_version])),
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([topic])),
        pa.array(np.full(n, partition, np.int32)),
        pa.array(offsets.astype(np.int64)),
        pa.array(indexes.astype(np.int32)),
    ]
    names += list(PROVENANCE_COLUMNS)
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_scores(value: bytes, headers: Sequence[tuple[str, bytes]] | None) -> pa.Table:
    """A scores message back as a table (one row for JSON, many for Arrow); model_version/topic as strings."""
    enc = (header_value(headers, ENCODING_HEADER) or JSON.encode()).decode()
    if enc == ARROW:
        table = pa.ipc.open_stream(value).read_all()
        for name in ("model_version", "topic"):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(name).cast(pa.string()))
        i = table.schema.get_field_index("time")
        return table.set_column(i, "time", table.column("time").cast(pa.int64()))
    row = json.loads(value)
    return pa.Table.from_pylist([row])
