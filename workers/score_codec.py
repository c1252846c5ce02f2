"""Scores on the wire: what a scoring worker writes to ``<pipeline>.scores`` and how a reader gets them back.

Every score carries where its event came from (source topic, partition, offset, and the row within an Arrow
message) and the model version that made it, so a verifier can check "every event scored exactly once" and
a reader can tell versions apart across a hot swap.

- ``json``: one message per event: ``{"key", "time" (epoch ms), <output names>..., "model_version",
  "topic", "partition", "offset", "index"}``; the message key is the stream key.
- ``arrow``: one Arrow IPC stream per message holding the scores of many events (columns ``key``, ``time``
  (timestamp ms), one float32 column per output name, ``model_version``, ``topic``, ``partition``,
  ``offset``, ``index``).

The message header ``rnnstream-encoding`` says which (same header as events).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from rnnstream.workers.event_codec import ARROW, ENCODING_HEADER, JSON, header_value

PROVENANCE_COLUMNS = ("model_version", "topic", "partition", "offset", "index")
JSON_HEADERS = [(ENCODING_HEADER, b"json")]
ARROW_HEADERS = [(ENCODING_HEADER, b"arrow")]


def scores_to_json(
    keys: Sequence[str],
    times_ms: np.ndarray,
    outputs: np.ndarray,
    output_names: Sequence[str],
    model_version: str,
    topic: str,
    partition: int,
    offsets: np.ndarray,
    indexes: np.ndarray,
) -> list[bytes]:
    """One JSON message value per scored event."""
    cols = outputs.astype(np.float64).tolist()
    times = times_ms.tolist()
    offs = offsets.tolist()
    idx = indexes.tolist()
    tail = (
        f',"model_version":{json.dumps(model_version)},"topic":{json.dumps(topic)},'
        f'"partition":{int(partition)}'
    )
    names = [json.dumps(n) for n in output_names]
    out = []
    for i, key in enumerate(keys):
        vals = ",".join(f"{n}:{v!r}" for n, v in zip(names, cols[i], strict=True))
        out.append(
            f'{{"key":{json.dumps(key)},"time":{times[i]},{vals}{tail},"offset":{offs[i]},"index":{idx[i]}}}'.encode()
        )
    return out


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
