"""The events a backfill reads: a time range, the Parquet source (the archive or any events), and the
read windows -- runs of consecutive UTC days, each sorted by time then Kafka provenance (see
:mod:`rnnstream.jobs.backfill` for why this order and what it bounds)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from rnnstream.errors import UsageError
from rnnstream.rnn_core.config import FeatureSpec
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.storage import resolve_filesystem
from rnnstream.workers.archive_sink import PROVENANCE_COLUMNS

MS_PER_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


def parse_time_ms(text: str, flag: str = "time") -> int:
    """An ISO date (``2026-11-01``, midnight UTC) or date-time (``2026-11-01T06:30``, ``...Z``, ``+02:00``;
    naive means UTC) as epoch milliseconds; :class:`UsageError` otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T06:30:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class TimeRange:
    """Event times ``start_ms <= t < end_ms`` (None: unbounded on that side)."""

    start_ms: int | None = None
    end_ms: int | None = None

    def __post_init__(self) -> None:
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise UsageError("--end must be after --start (the range is start <= time < end)")

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> TimeRange:
        return cls(
            None if start is None else parse_time_ms(start, "--start"),
            None if end is None else parse_time_ms(end, "--end"),
        )

    def describe(self) -> str:
        def fmt(ms: int | None) -> str:
            return "..." if ms is None else _iso(ms)

        return f"[{fmt(self.start_ms)}, {fmt(self.end_ms)})"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _day_of(ms: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=ms // MS_PER_DAY)).isoformat()


@dataclass(frozen=True)
class EventSource:
    """The events to score: a dataset, and whether it is partitioned by ``date=`` (the archive layout)."""

    dataset: ds.Dataset
    date_partitioned: bool
    location: str

    @property
    def provenance(self) -> tuple[str, ...]:
        """The Kafka provenance columns the data holds (order: partition, offset, event index)."""
        names = set(self.dataset.schema.names)
        return tuple(c for c in PROVENANCE_COLUMNS if c in names)


def open_events(data: str, pipeline: str, filesystem: pafs.FileSystem | None = None) -> EventSource:
    """The events of ``pipeline`` at ``data``: the archive root, its ``pipeline=<p>`` folder, a ``date=``
    folder, or any Parquet file/folder (local path or ``pyarrow.fs`` URI); one-line errors."""
    try:
        fs, path = resolve_filesystem(data, filesystem)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot open --data {data}: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise UsageError(
            f"no data at {data} (give the archive root, its pipeline=<name> folder or Parquet files)"
        )
    date_partitioned = False
    if info.type == pafs.FileType.Directory:
        base = posixpath.basename(path)
        children = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        dirs = {c.base_name for c in children if c.type == pafs.FileType.Directory}
        if base.startswith("pipeline=") and base != f"pipeline={pipeline}":
            raise UsageError(f"--data {data} holds pipeline {base.split('=', 1)[1]!r}, not {pipeline!r}")
        if f"pipeline={pipeline}" in dirs:  # the archive root
            path = f"{path}/pipeline={pipeline}"
            dirs = {
                c.base_name
                for c in fs.get_file_info(pafs.FileSelector(path))
                if c.type == pafs.FileType.Directory
            }
        elif any(d.startswith("pipeline=") for d in dirs):
            found = sorted(d.split("=", 1)[1] for d in dirs if d.startswith("pipeline="))
            raise UsageError(
                f"no archive for pipeline {pipeline!r} under {data} (it has: {', '.join(found)})"
            )
        date_partitioned = any(d.startswith("date=") for d in dirs)
    try:
        dataset = ds.dataset(
            path,
            filesystem=fs,
            format="parquet",
            partitioning=_DATE_PARTITIONING if date_partitioned else None,
        )
    except (OSError, pa.ArrowInvalid) as exc:
        raise UsageError(f"cannot read Parquet at {data}: {str(exc).splitlines()[0]}") from None
    if not dataset.files:
        raise UsageError(f"no Parquet files at {data}")
    return EventSource(dataset, date_partitioned, data)


def check_columns(schema: pa.Schema, spec: FeatureSpec, location: str) -> None:
    """The data must hold key, time and every column the model reads, with fitting types."""
    names = set(schema.names)
    needed = [KEY_COLUMN, TIME_COLUMN, *spec.numeric, *spec.vectors, *spec.categorical]
    missing = [c for c in needed if c not in names]
    if missing:
        raise UsageError(
            f"the model reads columns {missing} that {location} does not have "
            f"(is the model for another pipeline? data columns: {', '.join(schema.names)})"
        )
    if not pa.types.is_timestamp(schema.field(TIME_COLUMN).type):
        raise UsageError(
            f"column {TIME_COLUMN!r} of {location} must be a timestamp, is {schema.field('time').type}"
        )
    for name in spec.numeric:
        t = schema.field(name).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise UsageError(f"the model reads {name!r} as a number, {location} has it as {t}")
    for name, size in zip(spec.vectors, spec.vector_sizes, strict=True):
        t = schema.field(name).type
        if not (pa.types.is_fixed_size_list(t) and t.list_size == size):
            raise UsageError(f"the model reads {name!r} as {size} floats a row, {location} has it as {t}")
    for name in spec.categorical:
        t = schema.field(name).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)):
            raise UsageError(f"the model reads {name!r} as a category (string), {location} has it as {t}")


def _range_filter(source: EventSource, time_range: TimeRange) -> ds.Expression | None:
    time_type = source.dataset.schema.field(TIME_COLUMN).type
    conditions = []
    if time_range.start_ms is not None:
        conditions.append(ds.field(TIME_COLUMN) >= _timestamp(time_range.start_ms, time_type))
        if source.date_partitioned:
            conditions.append(ds.field("date") >= _day_of(time_range.start_ms))
    if time_range.end_ms is not None:
        conditions.append(ds.field(TIME_COLUMN) < _timestamp(time_range.end_ms, time_type))
        if source.date_partitioned:
            conditions.append(ds.field("date") <= _day_of(time_range.end_ms - 1))
    if not conditions:
        return None
    expr = conditions[0]
    for c in conditions[1:]:
        expr = expr & c
    return expr


def _timestamp(ms: int, time_type: pa.DataType) -> pa.Scalar:
    return pa.scalar(ms, pa.timestamp("ms", tz=time_type.tz)).cast(time_type, safe=False)


def times_ms(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if column.type != pa.timestamp("ms"):
        column = pc.cast(column, pa.timestamp("ms", tz=column.type.tz), safe=False)  # us/ns: truncate
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def events_per_day(source: EventSource, time_range: TimeRange) -> dict[int, int]:
    """UTC day number -> events in range that day; reads only the ``time`` column, batch by batch."""
    counts: dict[int, int] = {}
    flt = _range_filter(source, time_range)
    with _read_errors(source):
        for batch in source.dataset.to_batches(columns=[TIME_COLUMN], filter=flt):
            if batch.num_rows == 0:
                continue
            days, n = np.unique(times_ms(batch.column(0)) // MS_PER_DAY, return_counts=True)
            for d, c in zip(days.tolist(), n.tolist(), strict=True):
                counts[d] = counts.get(d, 0) + c
    return counts


@contextmanager
def _read_errors(source: EventSource) -> Iterator[None]:
    """A file that cannot be read (corrupt, other schema, storage error) ends the run with one line."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read the events at {source.location}: {first}") from None


def plan_windows(counts: dict[int, int], max_window_events: int) -> list[tuple[int, int]]:
    """Read windows ``(first day, last day)`` (inclusive, in order): the days with events, in order, merged
    while a window holds at most ``max_window_events`` events (a bigger day is a window of its own)."""
    windows: list[tuple[int, int]] = []
    held = 0
    for day in sorted(counts):
        if windows and held + counts[day] <= max_window_events:
            windows[-1] = (windows[-1][0], day)
            held += counts[day]
        else:
            windows.append((day, day))
            held = counts[day]
    return windows


def iter_windows(
    source: EventSource, time_range: TimeRange, windows: list[tuple[int, int]], columns: list[str]
) -> Iterator[pa.Table]:
    """Each window's events in range (``columns`` only), sorted by time then Kafka provenance, in order."""
    base = _range_filter(source, time_range)
    time_type = source.dataset.schema.field(TIME_COLUMN).type
    sort_keys = [(TIME_COLUMN, "ascending")] + [(c, "ascending") for c in source.provenance if c in columns]
    for first, last in windows:
        lo, hi = first * MS_PER_DAY, (last + 1) * MS_PER_DAY
        flt = (ds.field(TIME_COLUMN) >= _timestamp(lo, time_type)) & (
            ds.field(TIME_COLUMN) < _timestamp(hi, time_type)
        )
        if source.date_partitioned:  # prune to the window's date= folders
            flt = flt & (ds.field("date") >= _day_of(lo)) & (ds.field("date") <= _day_of(hi - 1))
        with _read_errors(source):
            table = source.dataset.to_table(columns=columns, filter=flt if base is None else base & flt)
        if table.num_rows:
            yield table.take(pc.sort_indices(table, sort_keys=sort_keys))  # a stable sort
