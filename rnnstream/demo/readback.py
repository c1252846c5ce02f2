"""What serving produced, read back from the broker rather than taken from the workers' word.

- throughput: history events / the span of their score messages' broker timestamps;
- latency of a live event: its score message's timestamp minus its event message's timestamp (both broker
  clocks), p50/p99 over the live events sent before the kill (steady state); the worst case with the
  outage is reported separately;
- the committed scores of the live events (read_committed), matched to the live table's rows by key, time
  and order, for the pipeline's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from rnnstream.pipelines.spec import GeneratedStream
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.score_codec import decode_scores
from rnnstream.workers.score_verifier import read_topic
from rnnstream.workers.worker_config import WorkerConfig


@dataclass
class ReadBack:
    history_eps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    duplicates: int
    missing: int
    outputs: np.ndarray
    output_names: list[str]
    notes: list[str]


def read_back(
    kafka: KafkaSettings,
    config: WorkerConfig,
    history: GeneratedStream,
    live: GeneratedStream,
    kill_wall_ms: int | None,
) -> ReadBack:
    """The committed scores and their broker timestamps (see the module docstring)."""
    event_ts = {(m.partition, m.offset): m.timestamp for m in read_topic(kafka, config.events_topic)}
    parts = []
    for m in read_topic(kafka, config.scores_topic):
        t = decode_scores(m.value, m.headers)
        parts.append(t.append_column("score_ts", pa.array(np.full(t.num_rows, m.timestamp, np.int64))))
    if not parts:
        raise RuntimeError(f"no scores in {config.scores_topic}")
    scores = pa.concat_tables(parts, promote_options="default").to_pandas()
    fixed = {"key", "time", "model_version", "topic", "partition", "offset", "index", "score_ts"}
    output_names = [c for c in scores.columns if c not in fixed]
    before = len(scores)
    scores = scores.drop_duplicates(["partition", "offset", "index"])
    duplicates = before - len(scores)
    scores["event_ts"] = [
        event_ts.get((p, o), -1) for p, o in zip(scores["partition"], scores["offset"], strict=True)
    ]
    split_ms = int(live.times_ms().min())
    hist = scores[scores["time"] < split_ms]
    span_s = (hist["score_ts"].max() - hist["score_ts"].min()) / 1000.0 if len(hist) > 1 else 0.0
    history_eps = len(hist) / span_s if span_s > 0 else float("nan")
    live_scores = scores[scores["time"] >= split_ms].sort_values(["partition", "offset", "index"])
    latency = (live_scores["score_ts"] - live_scores["event_ts"]).to_numpy(dtype=np.float64)
    steady = latency if kill_wall_ms is None else latency[live_scores["event_ts"].to_numpy() < kill_wall_ms]
    steady = steady if len(steady) else latency
    outputs, missing = _align(live, live_scores, output_names)
    notes = []
    if missing:
        notes.append(f"{missing} live events had no committed score")
    if duplicates:
        notes.append(f"{duplicates} duplicate scores (by source position) were dropped")
    return ReadBack(
        history_eps=float(history_eps),
        p50_ms=float(np.percentile(steady, 50)) if len(steady) else float("nan"),
        p99_ms=float(np.percentile(steady, 99)) if len(steady) else float("nan"),
        max_ms=float(latency.max()) if len(latency) else float("nan"),
        duplicates=int(duplicates),
        missing=int(missing),
        outputs=outputs,
        output_names=output_names,
        notes=notes,
    )


def _align(live: GeneratedStream, scores: pd.DataFrame, output_names: list[str]) -> tuple[np.ndarray, int]:
    """Scores in the live table's row order, matched on (key, time, n-th event of that key at that time)."""
    rows = pd.DataFrame(
        {
            "key": live.table.column(KEY_COLUMN).to_pylist(),
            "time": live.table.column(TIME_COLUMN).cast(pa.int64()).to_numpy(),
        }
    )
    rows["n"] = rows.groupby(["key", "time"]).cumcount()
    rows["row"] = np.arange(len(rows))
    s = scores[["key", "time", *output_names]].copy()
    s["n"] = s.groupby(["key", "time"]).cumcount()
    merged = rows.merge(s, on=["key", "time", "n"], how="left")
    out = np.full((len(rows), len(output_names)), np.nan, dtype=np.float64)
    out[merged["row"].to_numpy()] = merged[output_names].to_numpy(dtype=np.float64)
    missing = int(np.isnan(out[:, 0]).sum()) if len(output_names) else len(rows)
    return out, missing
