"""The end of a session as one more token, so a session that stops too early is visible.

A next-token model of session-like data (many short keys: a session, a job, a request) only sees what
comes; a session that was cut short, or one of a single event, looks like the start of a normal one.
So ``fit-file`` appends one *end-of-key* event to every session it trains on (the token :data:`END_TOKEN`,
the last of the vocabulary): the model learns how sessions end, and the held-out sessions' end events take
part in the alert threshold like any event.

``score-file`` then scores, when a key's last event in the file has been scored, the end token from that
key's state: ``end_score`` = 1 - P(the session ends here), written on the key's last row (empty elsewhere),
and that row alerts when either its own score or its end score crosses the threshold. A truncated
session has a low end probability; how long a session is counts too (a 1-event session of a system whose
sessions have 4+ events ends where an ending is unlikely).

A session whose events go on past the rows that ``fit-file`` read (``--max-events``) did not end there:
it gets no end event (:func:`keys_after`), so training does not learn that sessions stop mid-way.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from rnnstream.files.reader import iter_chunks, key_values
from rnnstream.files.schema import FileSchema
from rnnstream.rnn_core.config import FeatureSpec
from rnnstream.rnn_core.key_sequences import KeySequences

END_TOKEN = "<end of key>"


def has_end_token(schema: FileSchema) -> bool:
    """Whether the model of ``schema`` learned session endings (the end token closes its vocabulary)."""
    return schema.head == "next_token" and bool(schema.vocabulary) and schema.vocabulary[-1] == END_TOKEN


def with_end_token(schema: FileSchema) -> FileSchema:
    """``schema`` with :data:`END_TOKEN` appended to its token vocabulary (the other codes unchanged)."""
    return replace(schema, vocabulary=(*schema.vocabulary, END_TOKEN))


def end_code(spec: FeatureSpec) -> int:
    """The input code of the end token: the last of the token column's vocabulary (0 = unknown)."""
    return len(spec.vocabularies[0])


def end_rows(last: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """End-of-key input rows after each key's ``last[B, D]`` event: its values again, the end token, no time
    passed (the values and time only feed a state nobody reads; the token is what the model predicts)."""
    rows = np.array(last, dtype=np.float32, copy=True).reshape(-1, spec.input_size)
    rows[:, spec.num_continuous] = end_code(spec)
    if spec.use_time_delta:
        rows[:, -1] = 0.0
    return rows


def keys_after(path: Path, key_column: str, skip_rows: int, chunk_rows: int) -> set[str]:
    """The keys with events after the first ``skip_rows`` rows of ``path`` (reads the key column only)."""
    found: set[str] = set()
    for chunk in iter_chunks(path, (key_column,), chunk_rows):
        table = chunk.table
        if chunk.first_row + table.num_rows <= skip_rows:
            continue
        start = max(0, skip_rows - chunk.first_row)
        keys = key_values(table.column(key_column).slice(start), key_column, chunk.first_row + start)
        found.update(keys.unique().to_pylist())
    return found


def with_end_events(
    sequences: KeySequences, spec: FeatureSpec, still_open: set[str] | frozenset[str] = frozenset()
) -> KeySequences:
    """Every key's sequence with its end-of-key event appended (time: that of its last event), but the
    keys in ``still_open`` (whose events go on past what was read: they did not end)."""
    ends = [str(k) not in still_open for k in sequences.keys]
    xs = tuple(
        np.concatenate([x, end_rows(x[-1:], spec)]) if e else x
        for x, e in zip(sequences.x, ends, strict=True)
    )
    ys = None
    if sequences.y is not None:
        nan = np.full(1, np.nan, np.float32)
        ys = tuple(np.concatenate([y, nan]) if e else y for y, e in zip(sequences.y, ends, strict=True))
    times = None
    if sequences.times_ms is not None:
        times = tuple(
            np.concatenate([t, t[-1:]]) if e else t for t, e in zip(sequences.times_ms, ends, strict=True)
        )
    return KeySequences(keys=sequences.keys, x=xs, y=ys, times_ms=times)
