"""Backfill: score an archived range of events with one model version, through the serving code path.

Every event goes through :meth:`StreamScorer.score` with one :class:`KeyedStateStore` (the code the scoring
workers and :func:`rnnstream.rnn_core.evaluation.replay` run), in event-time order across keys, so a
backfill gives the scores the service would have given had it run this model over the range (states start
from zero at the start of the range).

Order and memory, honestly: scores depend on each key's events in time order. A first pass reads only the
``time`` column and counts the events of each UTC day in the range. Then the events are read a window at a
time, windows in date order, each window a run of consecutive days (merged up to ``max_window_events``,
default 1M; a bigger day is a window by itself) sorted by (time, kafka_partition, kafka_offset,
kafka_event_index) -- the provenance columns where present; for one key that is the order in which the
service consumed its events. Memory is bounded by ``max(max_window_events, the largest day)`` events of the
range (plus their scores), not by the range. For the archive (``pipeline=<p>/date=<YYYY-MM-DD>/``, dates of
event time) a window reads only its ``date=`` folders. Any other Parquet path is read with a filter on
``time``: row-group statistics skip what lies outside the window when the files are roughly in time order;
for a large unsorted file each window re-reads it (sort it, or partition it by date, first).

Output: Parquet files ``part-NNNNN.parquet`` under ``output`` (local folder or any ``pyarrow.fs`` URI), each
written to a hidden temporary name and then renamed, then a ``_SUCCESS.json`` summary. Rows: ``key``,
``time``, the provenance columns present in the input, ``model_version``, and one float32 column per model
output (``model.output_names()``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from rnnstream.errors import UsageError
from rnnstream.jobs.backfill_defaults import DEFAULT_BATCH_EVENTS, DEFAULT_WINDOW_EVENTS
from rnnstream.jobs.backfill_source import (
    EventSource,
    TimeRange,
    check_columns,
    events_per_day,
    iter_windows,
    plan_windows,
    times_ms,
)
from rnnstream.jobs.score_writer import DEFAULT_ROWS_PER_FILE, ScoreWriter
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer

MODEL_VERSION_COLUMN = "model_version"


@dataclass
class BackfillResult:
    """What a backfill did."""

    events: int
    days: int
    files: list[str]
    output: str
    model_version: str
    time_range: str
    seconds: float = 0.0
    output_names: list[str] = field(default_factory=list)


def backfill(
    model: StreamingModel,
    model_version: str,
    source: EventSource,
    output: str,
    time_range: TimeRange | None = None,
    *,
    batch_events: int = DEFAULT_BATCH_EVENTS,
    overwrite: bool = False,
    progress: bool = True,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    max_window_events: int = DEFAULT_WINDOW_EVENTS,
    key_ttl_ms: int | None = None,
) -> BackfillResult:
    """Score the events of ``source`` in ``time_range`` with ``model`` and write the scores to ``output``
    (keys idle longer than ``key_ttl_ms`` of event time start over, as in serving)."""
    if batch_events < 1 or max_window_events < 1:
        raise UsageError("--batch-events and --window-events must be >= 1")
    time_range = time_range or TimeRange()
    spec = model.config.features
    check_columns(source.dataset.schema, spec, source.location)
    started = time.perf_counter()
    counts = events_per_day(source, time_range)
    days = sorted(counts)
    total = sum(counts.values())
    if total == 0:
        raise UsageError(f"no events of {source.location} fall in the range {time_range.describe()}")
    provenance = list(source.provenance)
    feature_columns = [*spec.numeric, *spec.vectors, *spec.categorical]
    columns = list(dict.fromkeys([KEY_COLUMN, TIME_COLUMN, *provenance, *feature_columns]))
    names = model.output_names()
    scorer = StreamScorer(model, KeyedStateStore(model.config.state_shape), key_ttl_ms=key_ttl_ms)
    writer = ScoreWriter(output, overwrite=overwrite, rows_per_file=rows_per_file)
    bar = tqdm(
        total=total, unit="ev", unit_scale=True, desc="backfill", disable=not progress, mininterval=1.0
    )
    try:
        for table in iter_windows(source, time_range, plan_windows(counts, max_window_events), columns):
            keys = table.column(KEY_COLUMN).combine_chunks()
            if not pa.types.is_string(keys.type):
                keys = pc.cast(keys, pa.string())
            times = times_ms(table.column(TIME_COLUMN))
            out = np.empty((table.num_rows, len(names)), np.float32)
            for lo in range(0, table.num_rows, batch_events):
                hi = min(lo + batch_events, table.num_rows)
                x = features_from_arrow(table.slice(lo, hi - lo), spec)
                out[lo:hi] = scorer.score(keys.slice(lo, hi - lo), times[lo:hi], x)
                bar.update(hi - lo)
            writer.write(_score_table(table, keys, provenance, model_version, names, out))
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    result = BackfillResult(
        events=total,
        days=len(days),
        files=list(writer.files),
        output=output,
        model_version=model_version,
        time_range=time_range.describe(),
        seconds=time.perf_counter() - started,
        output_names=names,
    )
    writer.finish({**asdict(result), "data": source.location})
    return result


def _score_table(
    events: pa.Table,
    keys: pa.Array,
    provenance: list[str],
    model_version: str,
    names: list[str],
    outputs: np.ndarray,
) -> pa.Table:
    cols: dict[str, pa.Array | pa.ChunkedArray] = {KEY_COLUMN: keys, TIME_COLUMN: events.column(TIME_COLUMN)}
    for c in provenance:
        cols[c] = events.column(c)
    cols[MODEL_VERSION_COLUMN] = pa.repeat(pa.scalar(model_version, pa.string()), events.num_rows)
    for k, name in enumerate(names):
        cols[name] = pa.array(outputs[:, k])
    return pa.table(cols)
