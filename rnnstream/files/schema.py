"""What a model fitted on a user's file expects of a file: columns, time format, head, classes, vocabulary.

Saved beside the model as ``file_schema.json`` (plain JSON), so ``score-file`` reads a new file exactly as
``fit-file`` read the training file, and a file that lacks a column the model needs fails with one clear line.
It also turns a chunk of the file into rnnstream events (the :class:`EventSchema` layout: key, time, fields,
label) that the shared feature code and the stream scorer take.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.errors import UsageError
from rnnstream.files.alert_threshold import AlertThreshold
from rnnstream.files.columns import ONE_SERIES_KEY, FileColumns
from rnnstream.files.reader import (
    RawChunk,
    key_values,
    numeric_values,
    parse_times,
    text_values,
)
from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN, EventSchema

SIDECAR_NAME = "file_schema.json"
SIDECAR_VERSION = 1
# Label pairs whose second value is, by convention, the positive class of a binary head.
_CONVENTIONAL_PAIRS = ({"0", "1"}, {"false", "true"}, {"no", "yes"}, {"-1", "1"}, {"n", "y"})


@dataclass(frozen=True)
class FileSchema:
    """How to read a user's file for one fitted model (see module docstring)."""

    pipeline: str
    columns: FileColumns
    time_format: str
    head: str
    classes: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()
    threshold: AlertThreshold | None = None  # chosen by fit-file on its held-out part

    def event_schema(self) -> EventSchema:
        cats = ((self.columns.token, self.vocabulary),) if self.columns.token else ()
        return EventSchema(
            pipeline=self.pipeline,
            version=1,
            numeric=self.columns.values,
            categorical=cats,
            has_label=self.columns.label is not None,
        )

    @property
    def model_columns(self) -> tuple[str, ...]:
        """The columns a file must have to be scored (the label is not needed)."""
        cols = [*([self.columns.key] if self.columns.key else []), self.columns.time, *self.columns.values]
        return (*cols, self.columns.token) if self.columns.token else tuple(cols)

    def events(self, chunk: RawChunk, with_labels: bool = False) -> pa.Table:
        """A chunk of the file as events: key (str), time (timestamp ms), values, token (str), label (int64).

        With ``with_labels`` the label column is mapped to class indices (an unknown label is an error; an
        empty one stays null: that event feeds its key's state but teaches nothing, e.g. a label not known
        yet).
        """
        c = self.columns
        t = chunk.table
        arrays: dict[str, pa.Array] = {
            KEY_COLUMN: self.keys(chunk),
            TIME_COLUMN: pa.array(
                parse_times(t.column(c.time), self.time_format, c.time, chunk.first_row), pa.timestamp("ms")
            ),
        }
        for name in c.values:
            arrays[name] = pa.array(numeric_values(t.column(name), name, chunk.first_row), pa.float64())
        if c.token:
            arrays[c.token] = text_values(t.column(c.token))
        if with_labels and c.label:
            arrays[LABEL_COLUMN] = label_codes(t.column(c.label), self.classes, c.label, chunk.first_row)
        return pa.table(arrays)

    def keys(self, chunk: RawChunk) -> pa.Array:
        """A chunk's stream keys as strings; a file without a key column is one key (ONE_SERIES_KEY)."""
        key = self.columns.key
        if key is None:
            return pa.repeat(pa.scalar(ONE_SERIES_KEY), chunk.table.num_rows)
        return key_values(chunk.table.column(key), key, chunk.first_row)

    # ------------------------------------------------------------------------------------------ JSON sidecar
    def to_dict(self) -> dict:
        return {
            "sidecar_version": SIDECAR_VERSION,
            "pipeline": self.pipeline,
            "columns": self.columns.to_dict(),
            "time_format": self.time_format,
            "head": self.head,
            "classes": list(self.classes),
            "vocabulary": list(self.vocabulary),
            "threshold": self.threshold.to_dict() if self.threshold is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FileSchema:
        return cls(
            pipeline=d["pipeline"],
            columns=FileColumns.from_dict(d["columns"]),
            time_format=d["time_format"],
            head=d["head"],
            classes=tuple(d.get("classes") or ()),
            vocabulary=tuple(d.get("vocabulary") or ()),
            threshold=AlertThreshold.from_dict(d.get("threshold")),
        )

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SIDECAR_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> FileSchema:
        path = Path(directory) / SIDECAR_NAME
        if not path.is_file():
            raise UsageError(
                f"{directory} has no {SIDECAR_NAME}: it is not a model made by `rnnstream fit-file`"
            )
        return cls.from_dict(json.loads(path.read_text()))


def choose_head(columns: FileColumns, num_classes: int) -> str:
    """Label -> binary (2 classes) or multiclass (more); no label: token -> next_token, values -> forecast."""
    if columns.label:
        if num_classes < 2:
            what = "no value in any row" if num_classes == 0 else "only one class"
            raise UsageError(
                f"label column {columns.label!r} has {what}; a classifier needs at least two classes "
                "(drop --label-column to learn to forecast the stream instead)"
            )
        return "binary" if num_classes == 2 else "multiclass"
    return "next_token" if columns.token else "forecast"


def order_classes(counts: Counter[str], positive: str | None = None) -> tuple[str, ...]:
    """Label values in class-index order; for two classes the positive one goes last (index 1).

    The positive class is ``positive`` when given, else the conventional one of 0/1, false/true, no/yes,
    else the rarer class (what one usually wants to detect).
    """
    values = sorted(counts, key=_natural)
    if positive is not None and positive not in counts:
        raise UsageError(f"--positive-class {positive!r} is not a value of the label column ({values})")
    if len(values) != 2:
        return tuple(values)
    if positive is None:
        if {v.lower() for v in values} in _CONVENTIONAL_PAIRS:
            positive = max(values, key=lambda v: _natural(v.lower()))
        else:
            positive = min(values, key=lambda v: (counts[v], _natural(v)))
    return (next(v for v in values if v != positive), positive)


def learn_vocabulary(counts: Counter[str], max_size: int) -> tuple[str, ...]:
    """The most frequent tokens (ties by name), at most ``max_size``; the rest map to the unknown code."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(tok for tok, _ in ranked[:max_size])


def label_codes(
    arr: pa.Array | pa.ChunkedArray, classes: tuple[str, ...], column: str, first_row: int
) -> pa.Array:
    """Label values -> int64 class indices in ``classes`` order; an empty label stays null (no label for that
    event), an unseen one is an error."""
    text = text_values(arr)
    codes = pc.index_in(text, value_set=pa.array(classes, pa.string()))
    unknown = pc.and_(codes.is_null(), text.is_valid()).to_numpy(zero_copy_only=False)
    if unknown.any():
        bad = int(np.flatnonzero(unknown)[0])
        raise UsageError(
            f"label column {column!r} has the value {text[bad].as_py()!r}, not one of {list(classes)}, "
            f"at row {first_row + bad + 1}"
        )
    return pc.cast(codes, pa.int64())


def _natural(v: str) -> tuple:
    """Numbers in numeric order before text in text order."""
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)
