"""Score a user's CSV/Parquet file with a fitted model, through the same streaming code that serves Kafka.

Every event goes through :class:`StreamScorer` with a :class:`KeyedStateStore` (gather -> step -> scatter),
each key's state carried across the whole file, and the output has one row per input row, in input order:
the key, the time (as in the input), the label when the file has one, and the score columns of the head.

Order, honestly: a key's score depends only on that key's earlier events, so scoring in *file order* equals
scoring in event-time order across keys as long as each key's events appear in time order (ties keep file
order). A first pass over the key and time columns checks that (memory: one time per key, like the state
store itself). Such files are scored chunk by chunk, so their size is bounded by disk, not memory. A file
whose keys are out of time order is sorted by time in memory (a note says so), up to ``max_sort_rows``
rows; beyond that the error asks for a time-sorted file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from rnnstream.errors import UsageError
from rnnstream.files.columns import DEFAULT_CHUNK_ROWS
from rnnstream.files.reader import (
    RawChunk,
    column_names,
    file_format,
    iter_chunks,
    parse_times,
    require_columns,
)
from rnnstream.files.schema import FileSchema
from rnnstream.files.session_end import end_rows, has_end_token
from rnnstream.rnn_core.config import FeatureSpec
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer

DEFAULT_MAX_SORT_ROWS = 5_000_000
SCORE_BATCH = 4096  # events per StreamScorer.score call (a serving-sized micro-batch)


@dataclass(frozen=True)
class FileOrder:
    """What the first pass learned: rows, distinct keys, and whether each key's events are in time order."""

    rows: int
    keys: int
    in_time_order_per_key: bool
    globally_sorted: bool
    last_rows: np.ndarray | None = None  # each key's last row (sorted), when asked for


@dataclass(frozen=True)
class ScoreFileResult:
    rows: int
    keys: int
    seconds: float
    sorted_in_memory: bool
    output: Path
    state_bytes: int

    @property
    def events_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def score_columns(model: StreamingModel, schema: FileSchema) -> list[str]:
    """Names of the output's score columns for this model's head (the user's names where they exist)."""
    head = schema.head
    if head == "binary":
        return ["score"]
    if head == "multiclass":
        return ["class", *(f"p_{c}" for c in schema.classes)]
    if head == "forecast":  # the adaptive score's columns (score_static, anomaly_z) after the forecasts
        extra = model.output_names()[2 + len(schema.columns.values) :]
        return ["score", "error_z", *(f"forecast_{v}" for v in schema.columns.values), *extra]
    return ["score", "rank", "prob"]


def scores_table(model: StreamingModel, schema: FileSchema, out: np.ndarray) -> dict[str, pa.Array]:
    """The model's output rows ``[N, K]`` as named output columns (see :func:`score_columns`)."""
    names = model.output_names()
    cols = score_columns(model, schema)
    if schema.head == "multiclass":
        probs = out[:, : len(schema.classes)]
        best = np.asarray(schema.classes, dtype=object)[probs.argmax(axis=1)]
        arrays = {"class": pa.array(best.tolist(), pa.string())}
        arrays.update({c: pa.array(probs[:, i], pa.float64()) for i, c in enumerate(cols[1:])})
        return arrays
    if schema.head == "next_token":
        idx = {n: i for i, n in enumerate(names)}
        arrays = {
            "score": pa.array(out[:, idx["score"]], pa.float64()),
            "rank": pa.array(np.rint(out[:, idx["rank"]]).astype(np.int64)),
            "prob": pa.array(out[:, idx["prob"]], pa.float64()),
        }
        return _with_alert(arrays, out[:, idx["score"]], schema)
    return _with_alert({c: pa.array(out[:, i], pa.float64()) for i, c in enumerate(cols)}, out[:, 0], schema)


def _with_alert(arrays: dict[str, pa.Array], score: np.ndarray, schema: FileSchema) -> dict[str, pa.Array]:
    """``arrays`` plus the ``alert`` column when fit-file stored a threshold (compared in float64)."""
    if schema.threshold is not None:
        arrays["alert"] = pa.array(score.astype(np.float64) >= schema.threshold.value, pa.bool_())
    return arrays


def _with_end_score(arrays: dict[str, pa.Array], end: np.ndarray, schema: FileSchema) -> dict[str, pa.Array]:
    """``arrays`` plus ``end_score`` (NaN: not a key's last row); a last row also alerts on its end score."""
    arrays["end_score"] = pa.array(end.astype(np.float64), pa.float64(), from_pandas=True)
    if schema.threshold is not None:
        ends = np.nan_to_num(end.astype(np.float64), nan=-np.inf) >= schema.threshold.value
        arrays["alert"] = pa.array(arrays["alert"].to_numpy(zero_copy_only=False) | ends, pa.bool_())
    return arrays


def check_order(
    path: Path, schema: FileSchema, chunk_rows: int = DEFAULT_CHUNK_ROWS, last_rows: bool = False
) -> FileOrder:
    """First pass (key and time columns only): validates every time and checks per-key time order; with
    ``last_rows``, also where each key's last event is (its row in the file)."""
    c = schema.columns
    last: dict[str, int] = {}
    last_row: dict[str, int] = {}
    per_key_ok = True
    global_ok = True
    prev_max = np.iinfo(np.int64).min
    rows = 0
    for chunk in iter_chunks(path, tuple(k for k in (c.key, c.time) if k), chunk_rows):
        times = parse_times(chunk.table.column(c.time), schema.time_format, c.time, chunk.first_row)
        keys = schema.keys(chunk)
        rows += len(times)
        if global_ok and (times[0] < prev_max or np.any(np.diff(times) < 0)):
            global_ok = False
        prev_max = max(prev_max, int(times.max()))
        if per_key_ok:
            per_key_ok = _update_last_times(last, keys, times)
        if last_rows:
            first = chunk.first_row
            last_row.update(zip(keys.to_pylist(), range(first, first + len(times)), strict=True))
    ends = np.sort(np.fromiter(last_row.values(), np.int64, len(last_row))) if last_rows else None
    return FileOrder(
        rows=rows,
        keys=len(last),
        in_time_order_per_key=per_key_ok,
        globally_sorted=global_ok,
        last_rows=ends,
    )


def _update_last_times(last: dict[str, int], keys: pa.Array, times: np.ndarray) -> bool:
    """Track each key's last time; False as soon as a key goes back in time."""
    key_list = keys.to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(len(times)), key_list.astype(str)))  # by key, then file position
    sk = key_list[order]
    st = times[order]
    same = sk[1:] == sk[:-1]
    if np.any(same & (st[1:] < st[:-1])):
        return False
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.concatenate([starts[1:], [len(sk)]]) - 1
    for s, e in zip(starts, ends, strict=True):
        k = sk[s]
        prev = last.get(k)
        if prev is not None and st[s] < prev:
            return False
        last[k] = int(st[e])
    return True


def score_file(
    model: StreamingModel,
    schema: FileSchema,
    input_path: Path,
    output_path: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    max_sort_rows: int = DEFAULT_MAX_SORT_ROWS,
    note: Callable[[str], None] | None = None,
    key_ttl_ms: int | None = None,
) -> ScoreFileResult:
    """Score ``input_path`` into ``output_path`` (CSV or Parquet by extension); see the module docstring."""
    note = note or (lambda msg: print(msg, file=sys.stderr))
    input_path = Path(input_path)
    output_path = Path(output_path)
    out_format = file_format(output_path)
    require_columns(input_path, schema.model_columns, what="this model")
    if schema.columns.key is None and KEY_COLUMN in column_names(input_path):
        raise UsageError(
            f"this model was fitted on one series (no key column), but {input_path.name} has a "
            f"{KEY_COLUMN!r} column: fit a model on it with --key-column {KEY_COLUMN} to score each key apart"
        )
    ending = has_end_token(schema)  # the model learned session endings: score each key's end too
    order = check_order(input_path, schema, chunk_rows, last_rows=ending)
    passthrough = _passthrough_columns(input_path, schema)
    read_cols = tuple(dict.fromkeys((*schema.model_columns, *passthrough)))

    model.eval()
    store = KeyedStateStore(model.state_shape, capacity=max(1024, min(order.keys, 1 << 20)))
    scorer = StreamScorer(model, store, key_ttl_ms=key_ttl_ms)
    spec = model.config.features
    started = time.perf_counter()
    sorted_in_memory = False
    bar = tqdm(
        total=order.rows, unit="ev", unit_scale=True, desc="scoring", disable=not progress, file=sys.stderr
    )
    with bar, _AtomicWriter(output_path, out_format) as writer, torch.inference_mode():
        if order.in_time_order_per_key:
            chunks: Iterator[RawChunk] = iter_chunks(input_path, read_cols, chunk_rows)
            for chunk in chunks:
                events = schema.events(chunk)
                out = _score_events(scorer, events, spec)
                end = _end_scores(scorer, events, spec, order.last_rows, chunk.first_row) if ending else None
                writer.write(_output_table(model, schema, chunk.table, passthrough, out, end))
                bar.update(chunk.table.num_rows)
        else:
            if order.rows > max_sort_rows:
                raise UsageError(
                    f"{input_path.name}: some keys' events are not in time order and the file has "
                    f"{order.rows:,} rows (more than --max-sort-rows {max_sort_rows:,}); "
                    f"sort it by {schema.columns.time} first"
                )
            several = (
                " (one series: if it holds several, fit with --key-column)" if not schema.columns.key else ""
            )
            note(
                f"note: {input_path.name} is not in time order within each key{several}; sorting its "
                f"{order.rows:,} rows by time in memory (sort big files by time first to score them "
                "in bounded memory)"
            )
            sorted_in_memory = True
            whole = pa.concat_tables(ch.table for ch in iter_chunks(input_path, read_cols, chunk_rows))
            whole_chunk = RawChunk(whole, 0)
            events = schema.events(whole_chunk)
            perm = np.argsort(events.column(TIME_COLUMN).cast(pa.int64()).to_numpy(), kind="stable")
            out = np.empty((whole.num_rows, len(model.output_names())), dtype=np.float32)
            for start in range(0, len(perm), chunk_rows):
                idx = perm[start : start + chunk_rows]
                out[idx] = _score_events(scorer, events.take(pa.array(idx)), spec)
                bar.update(len(idx))
            end = _end_scores(scorer, events, spec, order.last_rows, 0) if ending else None
            writer.write(_output_table(model, schema, whole, passthrough, out, end))
    seconds = time.perf_counter() - started
    return ScoreFileResult(
        rows=order.rows,
        keys=store.num_keys,
        seconds=seconds,
        sorted_in_memory=sorted_in_memory,
        output=output_path,
        state_bytes=int(store.nbytes),
    )


def _score_events(scorer: StreamScorer, events: pa.Table, spec: FeatureSpec) -> np.ndarray:
    """Outputs of events in order, fed to the scorer in micro-batches of at most SCORE_BATCH rows.

    Bounded micro-batches keep the scorer's per-wave work small when a key repeats many times in a chunk
    (a one-key file is one wave per event)."""
    keys = events.column(KEY_COLUMN).combine_chunks()
    times = events.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
    x = features_from_arrow(events, spec)
    out = np.empty((len(times), len(scorer.output_names)), dtype=np.float32)
    for start in range(0, len(times), SCORE_BATCH):
        end = start + SCORE_BATCH
        out[start:end] = scorer.score(keys[start:end], times[start:end], x[start:end])
    return out


def _end_scores(
    scorer: StreamScorer, events: pa.Table, spec: FeatureSpec, last_rows: np.ndarray, first_row: int
) -> np.ndarray:
    """``end_score`` of the events of a chunk starting at file row ``first_row`` (NaN but on each key's last
    row): the end token scored from the key's state after its last event (see :mod:`.session_end`)."""
    n = events.num_rows
    lo, hi = np.searchsorted(last_rows, [first_row, first_row + n])
    rows = last_rows[lo:hi] - first_row
    end = np.full(n, np.nan, np.float32)
    if rows.size:
        ending = events.take(pa.array(rows))
        x = end_rows(features_from_arrow(ending, spec), spec)
        keys = ending.column(KEY_COLUMN).combine_chunks()
        times = ending.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
        for start in range(0, rows.size, SCORE_BATCH):
            stop = start + SCORE_BATCH
            end[rows[start:stop]] = scorer.score(keys[start:stop], times[start:stop], x[start:stop])[:, 0]
    return end


def _passthrough_columns(path: Path, schema: FileSchema) -> tuple[str, ...]:
    """Input columns copied to the output beside the scores: key, time and the label when the file has it."""
    c = schema.columns
    cols = [c.key, c.time] if c.key else [c.time]  # one series: no key column to copy
    if c.label and c.label in column_names(path):
        cols.append(c.label)
    return tuple(cols)


def _output_table(
    model: StreamingModel,
    schema: FileSchema,
    raw: pa.Table,
    passthrough: tuple[str, ...],
    out: np.ndarray,
    end: np.ndarray | None = None,
) -> pa.Table:
    arrays: dict[str, pa.Array | pa.ChunkedArray] = {c: raw.column(c) for c in passthrough}
    scores = scores_table(model, schema, out)
    if end is not None:
        scores = _with_end_score(scores, end, schema)
    for name, arr in scores.items():
        arrays[name if name not in arrays else f"{name}_"] = arr
    return pa.table(arrays)


class _AtomicWriter:
    """Writes the output chunk by chunk into a temp file beside it, renamed into place only on success."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        self._schema: pa.Schema | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._tmp = Path(tmp)

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._schema = table.schema
            if self.fmt == "parquet":
                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            else:
                self._writer = pacsv.CSVWriter(self._tmp, table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def __enter__(self) -> _AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is None and self._writer is not None:
            os.replace(self._tmp, self.path)
            return
        self._tmp.unlink(missing_ok=True)
        if exc_type is None:
            raise UsageError("the input file has no rows to score")
