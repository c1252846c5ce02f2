"""Monitoring-logs pipeline: log-template ids keyed by host; a next-token head scores each log line.

A host runs one session (a request, a job) after another. Every session follows one of a few workflows: it
opens (``E01``), names its request type, walks through the workflow's steps and closes (``E02``). The
workflows share a small set of step templates in different orders, so the template that comes next depends
on which workflow this session is in and how far it got, not on the last template alone. Even a bigram
model (one line of context) cannot tell a normal session from a broken one; the stateless baseline has no
context at all (it predicts the next template from a zero state: template frequencies).

Anomalous sessions (kinds in :data:`ANOMALY_KINDS`): ``wrong_order`` (two adjacent steps swapped),
``missing_step`` (a step left out) and ``unseen_template`` (a step replaced by a template id outside the
vocabulary, e.g. a new error message). Truth: ``label`` (1 on the lines where the session goes wrong),
``session_id`` (global session number), ``session_label`` (1 on every line of an anomalous session) and
``anomaly_kind`` (index into :data:`ANOMALY_KINDS` on the anomalous lines, -1 elsewhere).

Head: next-token (an embedding of the template id in, the next template's distribution out). An event's
score is ``1 - P(template that came)``; DeepLog's rule flags it when the template is not among the ``top_g``
most likely (``rank >= top_g``); a session is flagged when any of its lines is (its score is its worst line).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.pipelines.spec import (
    DEFAULT_START_MS,
    GeneratedStream,
    PipelineSpec,
    ServingDefaults,
    TrainingDefaults,
    assemble_table,
    group_cumsum,
    group_positions,
    split_counts,
    spread_first_gaps,
    time_order,
    times_from_gaps,
)
from rnnstream.rnn_core import metrics
from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.event_schema import KEY_COLUMN, EventSchema

NAME = "monitoring-logs"
SCHEMA_VERSION = 1
TOP_G = 3  # DeepLog: a line is normal when its template is among the g most likely

TEMPLATES: tuple[str, ...] = tuple(f"E{i:02d}" for i in range(1, 25))
UNSEEN_TEMPLATES: tuple[str, ...] = tuple(f"X{i:02d}" for i in range(1, 9))
_OPEN, _CLOSE = 0, 1  # E01, E02
_REQUEST_TYPES = (2, 3)  # E03, E04: the second line of every session
_STEPS = np.arange(4, 12)  # E05..E12: the shared steps of every workflow
ANOMALY_KINDS: tuple[str, ...] = ("wrong_order", "missing_step", "unseen_template")


def _workflows() -> tuple[tuple[int, ...], ...]:
    """Six fixed workflows (template indices): open, request type, 7-12 shared steps, close.

    Built once from a fixed seed, so every generated stream (any seed) follows the same system. Workflows
    with the same request type never share their next step at the same point, so a model that knows where
    a session is always has at most ``TOP_G`` candidates for the next line.
    """
    rng = np.random.default_rng(20260101)
    flows: list[tuple[int, ...]] = []
    while len(flows) < 6:
        req = _REQUEST_TYPES[len(flows) % 2]
        steps = tuple(int(s) for s in rng.choice(_STEPS, int(rng.integers(7, 13))))
        if any(a == b for a, b in itertools.pairwise(steps)):
            continue
        flow = (_OPEN, req, *steps, _CLOSE)
        if all(f[:3] != flow[:3] for f in flows):
            flows.append(flow)
    return tuple(flows)


WORKFLOWS = _workflows()
SCHEMA = EventSchema(
    pipeline=NAME,
    version=SCHEMA_VERSION,
    categorical=(("template", TEMPLATES),),
    has_label=True,
)


def generate(
    n_events: int,
    n_keys: int,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    anomaly_rate: float = 0.1,
) -> GeneratedStream:
    """``n_events`` log lines of ``n_keys`` hosts running sessions back to back; ``anomaly_rate`` broken."""
    rng = np.random.default_rng(seed)
    counts = split_counts(rng, n_events, n_keys, minimum=16, spread=0.3)
    n_flows = len(WORKFLOWS)
    lengths = np.array([len(f) for f in WORKFLOWS])
    table_w = np.full((n_flows, lengths.max()), -1, dtype=np.int64)
    for i, f in enumerate(WORKFLOWS):
        table_w[i, : len(f)] = f

    # ---- sessions: enough per host to fill its quota, then cut
    per_host = counts // (lengths.min() - 1) + 2
    sess_host = np.repeat(np.arange(n_keys), per_host)
    n_sess = len(sess_host)
    flow = rng.integers(0, n_flows, n_sess)
    tokens = table_w[flow].copy()  # [sessions, max_len], -1 = padding
    sess_len = lengths[flow]
    kind = np.where(rng.random(n_sess) < anomaly_rate, rng.integers(0, len(ANOMALY_KINDS), n_sess), -1)
    # position of the anomaly: a step (after the request type, before close)
    p = 2 + (rng.random(n_sess) * (sess_len - 4)).astype(np.int64)
    rows = np.arange(n_sess)
    bad = np.zeros_like(tokens, dtype=bool)
    # wrong order: swap steps p and p+1 (they differ: workflows never repeat a step back to back)
    s = kind == 0
    a, b = tokens[rows[s], p[s]], tokens[rows[s], p[s] + 1]
    tokens[rows[s], p[s]], tokens[rows[s], p[s] + 1] = b, a
    bad[rows[s], p[s]] = True
    bad[rows[s], p[s] + 1] = True
    # unseen template: step p becomes a template id outside the vocabulary
    s = kind == 2
    tokens[rows[s], p[s]] = len(TEMPLATES) + rng.integers(0, len(UNSEEN_TEMPLATES), int(s.sum()))
    bad[rows[s], p[s]] = True
    # missing step: step p is dropped; the line after it is where the session goes wrong
    s = kind == 1
    bad[rows[s], p[s] + 1] = True
    tokens[rows[s], p[s]] = -1

    keep = tokens >= 0
    flat_tokens = tokens[keep]
    flat_bad = bad[keep]
    flat_sess = np.broadcast_to(rows[:, None], tokens.shape)[keep]
    flat_host = sess_host[flat_sess]
    # position of each line on its host; keep the host's first counts[h] lines
    host_lines = np.bincount(flat_host, minlength=n_keys)
    _, line_pos = group_positions(host_lines)
    cut = line_pos < counts[flat_host]
    flat_tokens, flat_bad, flat_sess, flat_host = (
        flat_tokens[cut],
        flat_bad[cut],
        flat_sess[cut],
        flat_host[cut],
    )
    line_pos = line_pos[cut]
    n = len(flat_tokens)
    kept = np.bincount(flat_host, minlength=n_keys)

    # ---- times: lines of a session seconds apart, sessions a minute or so apart
    first_line = np.r_[True, flat_sess[1:] != flat_sess[:-1]]
    gap_s = np.where(first_line, rng.lognormal(np.log(60.0), 1.0, n), rng.lognormal(np.log(1.5), 0.8, n))
    spread_first_gaps(rng, gap_s, kept, 120)
    times = times_from_gaps(gap_s, kept, start_ms)

    label = flat_bad.astype(np.int64)
    session_bad = np.zeros(n_sess, dtype=np.int64)
    np.maximum.at(session_bad, flat_sess, label)
    # renumber the sessions that kept at least one line: 0, 1, ... in host order
    used, session_id = np.unique(flat_sess, return_inverse=True)
    anomaly_kind = np.where(flat_bad, kind[flat_sess], -1)

    order = time_order(flat_host, times)
    table = assemble_table(
        SCHEMA,
        "host",
        n_keys,
        flat_host,
        times,
        categorical={"template": (flat_tokens, TEMPLATES + UNSEEN_TEMPLATES)},
        label=label,
        order=order,
    )
    truth = {
        "label": label[order],
        "session_id": session_id.reshape(-1)[order].astype(np.int64),
        "session_label": session_bad[flat_sess][order],
        "anomaly_kind": anomaly_kind[order].astype(np.int8),
    }
    info = {
        "sessions": len(used),
        **{
            f"sessions_{k}": int(np.isin(used, np.flatnonzero(kind == i)).sum())
            for i, k in enumerate(ANOMALY_KINDS)
        },
    }
    return GeneratedStream(table, truth, info)


def evaluate(table: pa.Table, outputs: np.ndarray, truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-session precision, recall and F1 of DeepLog's top-g rule, and the best F1 of the session score.

    A line is flagged when ``rank >= TOP_G`` (column 1 of the next-token outputs); a session when any of
    its lines is. The session score (its worst line's ``1 - P``) gives ``session_best_f1`` over thresholds.

    Without ``session_id`` in ``truth`` (archived events carry only their ``label``), sessions are read off
    the events (:func:`sessions_from_table`) and a session is anomalous when any of its lines is labelled.
    """
    outputs = np.asarray(outputs)
    if "session_id" in truth:
        session = np.asarray(truth["session_id"])
        session_label = np.asarray(truth["session_label"])
    else:
        session = sessions_from_table(table)
        session_label = np.asarray(truth["label"])
    _, sess = np.unique(session, return_inverse=True)
    sess = sess.reshape(-1)
    n_sess = int(sess.max()) + 1 if len(sess) else 0
    y = np.zeros(n_sess, dtype=np.int64)
    np.maximum.at(y, sess, session_label.astype(np.int64))
    flagged = np.zeros(n_sess, dtype=bool)
    np.logical_or.at(flagged, sess, outputs[:, 1] >= TOP_G)
    score = np.full(n_sess, -np.inf)
    np.maximum.at(score, sess, outputs[:, 0])
    tp = int((flagged & (y == 1)).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    best_f1 = metrics.best_f1(y, score).f1 if n_sess else 0.0
    line_flags = outputs[:, 1] >= TOP_G
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "session_best_f1": float(best_f1),
        "line_flag_rate": float(line_flags.mean()) if len(line_flags) else 0.0,
        "sessions": float(n_sess),
        "anomalous_session_rate": float(y.mean()) if n_sess else 0.0,
    }


def sessions_from_table(table: pa.Table) -> np.ndarray:
    """A session number per row, from the events alone: a key's session starts at each open line (``E01``).

    Rows may interleave keys (event-time order); a key's lines before its first open line form a session of
    their own. The numbers identify sessions, they do not order them.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    key = table.column(KEY_COLUMN).combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
    template = table.column("template").combine_chunks()
    is_open = np.asarray(
        pc.fill_null(pc.equal(template, TEMPLATES[_OPEN]), False).to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key[order])
    opened = np.empty(n, dtype=np.int64)
    opened[order] = group_cumsum(is_open[order], counts[counts > 0])
    return key * (n + 1) + opened


def pipeline_spec() -> PipelineSpec:
    """The monitoring-logs pipeline: GRU + next-token head over log-template ids."""
    return PipelineSpec(
        name=NAME,
        description="log-template ids per host; DeepLog-style next-template prediction, top-g rule",
        key_meaning="host",
        schema=SCHEMA,
        model_config=ModelConfig(
            features=SCHEMA.feature_spec(),
            cell="gru",
            head="next_token",
            hidden_size=64,
            num_layers=1,
            embedding_dim=16,
        ),
        label_column=None,
        # Many small lines per host: big batches, short linger; a host quiet for 6 hours starts afresh.
        serving=ServingDefaults(
            partitions=12,
            max_batch_events=8192,
            batch_linger_ms=50,
            key_ttl_seconds=6 * 3600,
            checkpoint_interval_events=200_000,
            checkpoint_interval_seconds=30.0,
        ),
        training=TrainingDefaults(epochs=10, chunk_len=64, batch_keys=32, learning_rate=5e-3),
        generator=generate,
        evaluator=evaluate,
        primary_metric="f1",
        demo_keys=100,
        demo_events_per_key=500,
    )
