"""A user's CSV or Parquet file, read in chunks and turned into rnnstream events (key, time, fields, label).

Why a module of its own: ``fit-file`` and ``score-file`` must read a file the same way (same columns, same
time parsing, same errors), and neither may need the whole file in memory. CSV is read with
``pyarrow.csv.open_csv`` (blocks), Parquet with ``ParquetFile.iter_batches``; every used column is read as it
is and converted here, so a bad value is reported with its column, row and value instead of a pyarrow trace.

Times: Arrow timestamps and dates are used as they are; strings are ISO 8601 (a zone offset is honoured, no
offset means UTC); numbers are epoch seconds, epoch milliseconds or plain step numbers (one step = one
second, so the model's time-gap input counts steps). ``auto`` picks from the first chunk: strings that all
parse as numbers are numbers; numbers >= 1e11 are epoch ms, >= 1e8 epoch s, anything smaller step numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rnnstream.errors import UsageError
from rnnstream.files.columns import DEFAULT_CHUNK_ROWS, ONE_SERIES_NOTE, TIME_FORMATS, FileColumns
from rnnstream.rnn_core.event_schema import KEY_COLUMN

STEP_MS = 1000  # one step number = one second of event time
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_EPOCH_MS_MIN = 1e11  # 1973-03-03 in ms; as seconds it would be year 5138
_EPOCH_S_MIN = 1e8  # 1973-03-03 in seconds


@dataclass(frozen=True)
class RawChunk:
    """One chunk of the file as read (the used columns only) and the file row number of its first row."""

    table: pa.Table
    first_row: int


def file_format(path: Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file name."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise UsageError(f"{path}: unknown file type; use a .csv or .parquet file")


def column_names(path: Path) -> list[str]:
    """The file's column names (reads the header or the Parquet footer only)."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        if file_format(path) == "parquet":
            return list(pq.ParquetFile(path).schema_arrow.names)
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=1 << 16), parse_options=_parse(path)
        )
        return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"cannot read {path}: {_first_line(exc)}") from exc


def require_columns(path: Path, needed: tuple[str, ...], what: str | None = None) -> None:
    """Raise a one-line error naming the missing columns (and ``what`` needs them) and listing the file's."""
    names = column_names(path)
    missing = [c for c in needed if c not in names]
    if missing:
        by = f" needed by {what}" if what else ""
        raise UsageError(f"{path.name} has no column(s) {missing}{by}; its columns are {names}")


def with_key_column(path: Path, columns: FileColumns) -> tuple[FileColumns, str | None]:
    """``columns`` with the stream key decided, and a note for the summary when it was not named.

    The named ``--key-column`` wins. Else a column called ``key`` (rnnstream's own name for the stream key;
    no other column is guessed to be one) is the key. Else there is none: the whole file is one series.
    """
    if columns.key is not None:
        return columns, None
    if KEY_COLUMN in column_names(path) and KEY_COLUMN not in columns.used:
        return replace(
            columns, key=KEY_COLUMN
        ), f"key column {KEY_COLUMN!r} (by its name; --key-column names another)"
    return columns, ONE_SERIES_NOTE


def count_rows(path: Path) -> int | None:
    """Row count when it is cheap to know (Parquet footer), else None."""
    if file_format(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


def iter_chunks(
    path: Path, columns: tuple[str, ...], chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[RawChunk]:
    """The file's used ``columns`` chunk by chunk (about ``chunk_rows`` rows each), never the whole file."""
    require_columns(path, columns)
    first = 0
    try:
        if file_format(path) == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=list(columns))
        else:
            # Every used column as text: one conversion path (below) with our own errors for CSV and Parquet.
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=max(1 << 16, chunk_rows * 64)),
                parse_options=_parse(path),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(columns),
                    column_types={c: pa.string() for c in columns},
                    strings_can_be_null=True,
                ),
            )
            batches = iter(reader)
        for batch in batches:
            if batch.num_rows:
                yield RawChunk(pa.Table.from_batches([batch]), first)
                first += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise UsageError(f"cannot read {path.name} near row {first}: {_first_line(exc)}") from exc


# ------------------------------------------------------------------------------------------------ times
def resolve_time_format(arr: pa.Array | pa.ChunkedArray, requested: str, column: str) -> str:
    """A column's time format: ``native`` (Arrow timestamps/dates) or a TIME_FORMATS entry other than auto."""
    if requested not in TIME_FORMATS:
        raise UsageError(f"--time-format must be one of {', '.join(TIME_FORMATS)}, got {requested!r}")
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "native"
    if requested != "auto":
        return requested
    numbers = _as_numbers(arr) if _is_text(t) else arr
    if numbers is None:
        return "iso"
    if not (pa.types.is_integer(numbers.type) or pa.types.is_floating(numbers.type)):
        raise UsageError(
            f"time column {column!r} has type {t}; use times (ISO strings), epoch numbers or steps"
        )
    values = np.abs(np.asarray(pc.drop_null(numbers).to_numpy(zero_copy_only=False), dtype=np.float64))
    if values.size == 0:
        return "step"
    typical = float(np.median(values))
    if typical >= _EPOCH_MS_MIN:
        return "epoch_ms"
    if typical >= _EPOCH_S_MIN:
        return "epoch_s"
    return "step"


def parse_times(arr: pa.Array | pa.ChunkedArray, fmt: str, column: str, first_row: int) -> np.ndarray:
    """Event times as int64 ms since the epoch (UTC); a clear error names a bad value and its row."""
    arr = _combined(arr)
    if arr.null_count:
        raise UsageError(
            f"time column {column!r} is empty at row {_row(first_row, _first_null(arr))}; fill or drop it"
        )
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if pa.types.is_date(t):
            arr = pc.cast(arr, pa.timestamp("ms"))
        # Arrow stores timestamps as UTC counts of their unit (a zone only changes how they print).
        counts = np.asarray(arr.view(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
        unit = arr.type.unit
        if unit == "s":
            return counts * 1000
        return counts // {"ms": 1, "us": 1000, "ns": 1_000_000}[unit]
    if fmt in ("iso", "native"):  # native: the model was fitted on Arrow timestamps; text here is ISO
        return _parse_iso(arr, column, first_row)
    if _is_text(t):
        arr = _numbers_of_text(
            arr,
            first_row,
            lambda cell, row: (
                f"time column {column!r}: cannot read {cell!r} (row {row}) as a {fmt} number; "
                "use --time-format iso for date strings"
            ),
        )
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise UsageError(
            f"time column {column!r} has type {t}; use times (ISO strings), epoch numbers or steps"
        )
    values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise UsageError(
            f"time column {column!r} has a non-finite value at row {_row(first_row, int(bad[0]))}"
        )
    scale = {"epoch_s": 1000.0, "epoch_ms": 1.0, "step": float(STEP_MS)}[fmt]
    return np.round(values * scale).astype(np.int64)


def _parse_iso(arr: pa.Array, column: str, first_row: int) -> np.ndarray:
    if not _is_text(arr.type):
        raise UsageError(
            f"time column {column!r} holds {arr.type} values, not ISO strings; drop --time-format iso"
        )
    for target in (pa.timestamp("ms"), pa.timestamp("ms", tz="UTC")):
        try:
            return pc.cast(arr, target).cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            continue
    # Mixed offsets, fractional digits beyond ms, "2024/01/02": pandas' ISO 8601 parser, then a clear error.
    strings = arr.to_pandas()
    parsed = pd.to_datetime(strings, format="ISO8601", utc=True, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        raise UsageError(
            f"time column {column!r}: cannot parse {strings.iloc[int(bad[0])]!r} "
            f"(row {_row(first_row, int(bad[0]))}) as a time; use ISO 8601 (2024-01-31T12:00:00Z), "
            "epoch seconds/milliseconds or step numbers"
        )
    return parsed.to_numpy(dtype="datetime64[ms]").astype(np.int64)


# ----------------------------------------------------------------------------------------------- values
def numeric_values(arr: pa.Array | pa.ChunkedArray, column: str, first_row: int) -> np.ndarray:
    """A value column as float64; a clear error for empty, non-numeric or non-finite cells."""
    arr = _combined(arr)
    if arr.null_count:
        raise UsageError(
            f"value column {column!r} is empty at row {_row(first_row, _first_null(arr))}; "
            "fill or drop missing values"
        )
    t = arr.type
    if _is_text(t):
        arr = _numbers_of_text(
            arr,
            first_row,
            lambda cell, row: f"value column {column!r} has a non-numeric value {cell!r} at row {row}",
        )
    elif pa.types.is_boolean(t):
        arr = pc.cast(arr, pa.int8())
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise UsageError(
            f"value column {column!r} has type {t}, not numbers; use a --token-column for categories"
        )
    values = np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise UsageError(
            f"value column {column!r} has a non-finite value (NaN/inf) at row {_row(first_row, int(bad[0]))}"
        )
    return values


def text_values(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A key, token or label column as strings (integers written plainly, 1.0 as "1"); nulls stay null."""
    arr = _combined(arr)
    t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        values = arr.to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        if finite.size and np.all(finite == np.round(finite)):
            return pc.cast(pc.cast(arr, pa.int64(), safe=False), pa.string())
    return pc.cast(arr, pa.string())


def key_values(arr: pa.Array | pa.ChunkedArray, column: str, first_row: int) -> pa.Array:
    """The stream key column as non-empty strings."""
    keys = text_values(arr)
    if keys.null_count:
        raise UsageError(
            f"key column {column!r} is empty at row {_row(first_row, _first_null(keys))}; fill or drop it"
        )
    return keys


# ---------------------------------------------------------------------------------------------- helpers
def _as_numbers(arr: pa.Array) -> pa.Array | None:
    """Strings -> float64 when every non-null one is a number, else None."""
    try:
        return pc.cast(pc.utf8_trim_whitespace(arr), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _numbers_of_text(arr: pa.Array, first_row: int, error: Callable[[object, int], str]) -> pa.Array:
    """A text column as float64; ``UsageError(error(cell, row))`` at its first cell that is no number."""
    numbers = _as_numbers(arr)
    if numbers is None:
        bad = _first_non_number(arr)
        raise UsageError(error(arr[bad].as_py(), _row(first_row, bad)))
    return numbers


def _first_non_number(arr: pa.Array) -> int:
    parsed = pd.to_numeric(arr.to_pandas(), errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy() & ~arr.is_null().to_numpy(zero_copy_only=False))
    return int(bad[0]) if bad.size else 0


def _row(first_row: int, i: int) -> int:
    """A 1-based data row number (row 1 = the first row after a CSV header), as a user counts."""
    return first_row + i + 1


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def _combined(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def _parse(path: Path) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if path.name.lower().endswith(".tsv") else ",")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
