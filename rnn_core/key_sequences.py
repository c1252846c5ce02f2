"""Per-key event sequences for training: :class:`KeySequences` (each key's feature rows and labels, in event
order), built from an Arrow table (:func:`sequences_from_table`), sharded across ranks (:func:`shard`) and
split by key (:func:`split_keys`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.rnn_core.config import FeatureSpec
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.features import features_from_arrow


@dataclass(frozen=True)
class KeySequences:
    """Each key's events in time order: ``x[i]`` float32 ``[T_i, D]`` (time delta filled), ``y[i]`` ``[T_i]``.

    ``y`` holds float32 labels with NaN where an event has none (None when there are no labels at all);
    ``times_ms[i]`` are the event times (int64 ms).
    """

    keys: tuple[str, ...]
    x: tuple[np.ndarray, ...]
    y: tuple[np.ndarray, ...] | None = None
    times_ms: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.x):
            raise ValueError("KeySequences: one x array per key")
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError("KeySequences: one y array per key")
        if self.times_ms is not None and len(self.times_ms) != len(self.x):
            raise ValueError("KeySequences: one times_ms array per key")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(a) for a in self.x], dtype=np.int64)

    @property
    def num_events(self) -> int:
        return int(self.lengths.sum())

    def all_x(self) -> np.ndarray:
        """Every event's input row, ``[N, D]`` (for fitting normalization)."""
        return np.concatenate(self.x) if self.x else np.zeros((0, 0), dtype=np.float32)

    def subset(self, indices: Sequence[int]) -> KeySequences:
        """The sequences of the keys at ``indices``, in that order."""
        idx = list(indices)
        return KeySequences(
            keys=tuple(self.keys[i] for i in idx),
            x=tuple(self.x[i] for i in idx),
            y=None if self.y is None else tuple(self.y[i] for i in idx),
            times_ms=None if self.times_ms is None else tuple(self.times_ms[i] for i in idx),
        )


def time_deltas_seconds(keys: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """Seconds since the same key's previous event for rows sorted by (key, time); 0 at a key's first event.

    The same rule the stream scorer applies from its store's last-event times.
    """
    dt = np.zeros(len(times_ms), dtype=np.float64)
    if len(times_ms) > 1:
        same_key = keys[1:] == keys[:-1]
        dt[1:] = np.where(same_key, np.diff(times_ms.astype(np.int64)) / 1000.0, 0.0)
    return dt.astype(np.float32)


def sequences_from_table(
    table: pa.Table | pa.RecordBatch, spec: FeatureSpec, label_column: str | None = None
) -> KeySequences:
    """Per-key sequences from events in the EventSchema layout (any order; sorted here by key, then time).

    The time-delta input (last column, when ``spec.use_time_delta``) is filled as the stream scorer fills it.
    ``label_column`` (e.g. "label"): null labels become NaN (no label for that event).
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    for name in (KEY_COLUMN, TIME_COLUMN, *(() if label_column is None else (label_column,))):
        if name not in table.schema.names:
            raise ValueError(f"events have no column {name!r} (columns: {table.schema.names})")
    if table.num_rows == 0:
        return KeySequences(keys=(), x=(), y=None if label_column is None else (), times_ms=())
    order = pc.sort_indices(table, sort_keys=[(KEY_COLUMN, "ascending"), (TIME_COLUMN, "ascending")])
    table = table.take(order)
    keys = np.asarray(table.column(KEY_COLUMN).to_numpy(zero_copy_only=False))
    time_col = table.column(TIME_COLUMN)
    if pa.types.is_timestamp(time_col.type):
        time_col = pc.cast(time_col, pa.timestamp("ms"))
    times = np.asarray(pc.cast(time_col, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    x = features_from_arrow(table, spec)
    if spec.use_time_delta:
        x[:, -1] = time_deltas_seconds(keys, times)
    y = None
    if label_column is not None:
        labels = pc.cast(table.column(label_column), pa.float64())
        y = np.asarray(labels.to_numpy(zero_copy_only=False), dtype=np.float32)  # nulls -> NaN
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bounds = [*starts.tolist(), len(keys)]
    spans = list(itertools.pairwise(bounds))
    return KeySequences(
        keys=tuple(str(keys[a]) for a, _ in spans),
        x=tuple(x[a:b] for a, b in spans),
        y=None if y is None else tuple(y[a:b] for a, b in spans),
        times_ms=tuple(times[a:b] for a, b in spans),
    )


def shard(sequences: KeySequences, rank: int, world_size: int) -> KeySequences:
    """This rank's keys: every key goes to exactly one rank, balancing the number of events.

    Deterministic (longest keys first, each to the rank with the fewest events so far), so every rank
    computes the same split from the same data.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    lengths = sequences.lengths
    load = [0] * world_size
    mine: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: (-lengths[i], sequences.keys[i])):
        r = min(range(world_size), key=lambda r: (load[r], r))
        load[r] += int(lengths[i])
        if r == rank:
            mine.append(i)
    return sequences.subset(sorted(mine))


def split_keys(
    sequences: KeySequences, validation_fraction: float, seed: int = 0
) -> tuple[KeySequences, KeySequences]:
    """(train, validation) by key: a seeded random ``validation_fraction`` of the keys is held out."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in [0, 1)")
    perm = np.random.default_rng(seed).permutation(len(sequences))
    n_val = round(len(sequences) * validation_fraction)
    return sequences.subset(sorted(perm[n_val:].tolist())), sequences.subset(sorted(perm[:n_val].tolist()))
