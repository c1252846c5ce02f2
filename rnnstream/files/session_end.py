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
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

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


def with_end_events(sequences: KeySequences, spec: FeatureSpec) -> KeySequences:
    """Every key's sequence with its end-of-key event appended (time: that of its last event)."""
    xs = tuple(np.concatenate([x, end_rows(x[-1:], spec)]) for x in sequences.x)
    ys = None
    if sequences.y is not None:
        ys = tuple(np.concatenate([y, np.full(1, np.nan, np.float32)]) for y in sequences.y)
    times = None
    if sequences.times_ms is not None:
        times = tuple(np.concatenate([t, t[-1:]]) for t in sequences.times_ms)
    return KeySequences(keys=sequences.keys, x=xs, y=ys, times_ms=times)
