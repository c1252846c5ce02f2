"""What a pipeline is: its event schema, default model, serving defaults, stream generator and metrics.

A :class:`PipelineSpec` is plain data handed to the workers and the training loop (they never import a
pipeline module). :func:`get_pipeline` builds one by name; there is no mutable registry.

Generators share one shape: ``generate(n_events, n_keys, seed, start_ms=...) -> GeneratedStream``, a table in
the pipeline's Arrow schema sorted by event time across keys (keys interleaved, irregular gaps), plus ground
truth arrays aligned with its rows. The signal a generator plants is in the order and history of a key's
events, so that a model with a per-key memory can find what a model of single events cannot.

The helpers at the bottom (grouped cumulative sums, key names, table assembly) keep generators vectorized:
no per-event Python, so they scale from a test-sized stream to millions of events.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.config import ConfigError, FeatureSpec, ModelConfig
from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN, EventSchema

PIPELINE_NAMES: tuple[str, ...] = ("fraud", "monitoring-metrics", "monitoring-logs", "video")

# 2026-01-01T00:00:00Z: the default start of generated streams (any value works; streams are relative to it).
DEFAULT_START_MS = 1_767_225_600_000
MS_PER_S = 1000
MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class ServingDefaults:
    """How workers serve a pipeline unless told otherwise (CLI flags override each value).

    ``max_batch_events`` and ``batch_linger_ms`` bound a micro-batch (whichever comes first);
    ``key_ttl_seconds`` evicts a key's state after that much event time without an event; a partition is
    checkpointed every ``checkpoint_interval_events`` events or ``checkpoint_interval_seconds`` seconds.
    """

    partitions: int
    max_batch_events: int
    batch_linger_ms: int
    key_ttl_seconds: float
    checkpoint_interval_events: int
    checkpoint_interval_seconds: float

    @property
    def key_ttl_ms(self) -> int:
        """:attr:`key_ttl_seconds` in event-time milliseconds, as :class:`StreamScorer` takes it."""
        return round(self.key_ttl_seconds * 1000)

    def __post_init__(self) -> None:
        for name in ("partitions", "max_batch_events", "key_ttl_seconds", "checkpoint_interval_events"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ServingDefaults.{name} must be positive")
        if self.batch_linger_ms < 0 or self.checkpoint_interval_seconds <= 0:
            raise ConfigError(
                "ServingDefaults: batch_linger_ms must be >= 0 and checkpoint_interval_seconds > 0"
            )


@dataclass(frozen=True)
class TrainingDefaults:
    """Truncated-BPTT settings that train the default model well on the pipeline's generated data."""

    epochs: int = 10
    chunk_len: int = 64
    batch_keys: int = 32
    learning_rate: float = 3e-3


@dataclass(frozen=True)
class GeneratedStream:
    """A generated stream: ``table`` (event-time order, the pipeline's Arrow schema) and per-row ``truth``.

    ``truth`` maps a name to a numpy array with one entry per table row (labels, anomaly segment ids, session
    ids, ...); what each pipeline puts there is described in its module. ``info`` holds stream-level facts
    (e.g. the number of planted episodes per kind), for reports.
    """

    table: pa.Table
    truth: Mapping[str, np.ndarray]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.table.num_rows
        for name, arr in self.truth.items():
            if len(arr) != n:
                raise ValueError(f"truth[{name!r}] has {len(arr)} entries for {n} rows")

    @property
    def num_events(self) -> int:
        return self.table.num_rows

    def times_ms(self) -> np.ndarray:
        """Event times as int64 milliseconds since the epoch."""
        return self.table.column(TIME_COLUMN).cast(pa.int64()).to_numpy()

    def take(self, rows: np.ndarray) -> GeneratedStream:
        """The stream restricted to ``rows`` (indices or a boolean mask), order kept."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return GeneratedStream(
            self.table.take(pa.array(idx)), {k: v[idx] for k, v in self.truth.items()}, dict(self.info)
        )

    def split_time(self, fraction: float) -> tuple[GeneratedStream, GeneratedStream, int]:
        """Split at the event time below which ``fraction`` of the events lie: (before, after, split_ms).

        Keys continue across the split, so the later part is scored by replaying the whole stream (the
        earlier part only warms the states) — the way a deployed model meets new traffic.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError("fraction must be in (0, 1)")
        times = self.times_ms()
        split_ms = int(times[min(int(len(times) * fraction), len(times) - 1)])
        before = times < split_ms
        return self.take(before), self.take(~before), split_ms


class Generator(Protocol):
    def __call__(
        self, n_events: int, n_keys: int, seed: int, start_ms: int = DEFAULT_START_MS
    ) -> GeneratedStream: ...


Evaluator = Callable[[pa.Table, np.ndarray, Mapping[str, np.ndarray]], dict[str, float]]


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that makes one use case, as data.

    - ``schema``: the versioned event schema; ``model_config`` the default model (features from
      ``schema.feature_spec()``); ``label_column`` the column a supervised head learns from (None for the
      self-supervised forecast and next-token heads, whose labels are only used to evaluate);
    - ``serving`` / ``training``: defaults sized for the pipeline's traffic;
    - ``generator``: the seeded stream generator; ``evaluator(table, outputs, truth)`` the pipeline's metrics
      for model outputs ``[N, K]`` (columns as ``StreamingModel.output_names()``) of the table's rows;
    - ``primary_metric``: the metric that decides stateful vs stateless and model reviews (higher is better);
    - ``demo_keys`` / ``demo_events_per_key``: the shape of a demo-sized generated stream.
    """

    name: str
    description: str
    key_meaning: str
    schema: EventSchema
    model_config: ModelConfig
    label_column: str | None
    serving: ServingDefaults
    training: TrainingDefaults
    generator: Generator
    evaluator: Evaluator
    primary_metric: str
    demo_keys: int = 200
    demo_events_per_key: int = 200

    def generate(
        self, n_events: int, n_keys: int, seed: int = 0, start_ms: int = DEFAULT_START_MS, **kwargs: Any
    ) -> GeneratedStream:
        """A seeded stream of ``n_events`` events of ``n_keys`` keys, in event-time order, with truth."""
        if n_events < 1 or n_keys < 1:
            raise ConfigError("generate needs n_events >= 1 and n_keys >= 1")
        return self.generator(n_events, n_keys, seed, start_ms=start_ms, **kwargs)

    def evaluate(
        self, table: pa.Table, outputs: np.ndarray, truth: Mapping[str, np.ndarray]
    ) -> dict[str, float]:
        """The pipeline's metrics of model ``outputs[N, K]`` for the events of ``table``, given ``truth``."""
        outputs = np.asarray(outputs)
        if outputs.ndim != 2 or outputs.shape[0] != table.num_rows:
            raise ValueError(f"outputs must be [{table.num_rows}, K], got {outputs.shape}")
        return self.evaluator(table, outputs, truth)

    def stateless_config(self) -> ModelConfig:
        """The same-size baseline: the default model that sees each event alone."""
        return model_config_replace(self.model_config, stateless=True)


def get_pipeline(name: str) -> PipelineSpec:
    """The spec of pipeline ``name`` (one of :data:`PIPELINE_NAMES`; ``_`` and ``-`` are interchangeable)."""
    canonical = name.replace("_", "-")
    if canonical not in PIPELINE_NAMES:
        raise ConfigError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINE_NAMES)}")
    module = importlib.import_module(f"rnnstream.pipelines.{canonical.replace('-', '_')}")
    return module.pipeline_spec()


def model_config_replace(config: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of ``config`` with ``changes`` (validated again); ``features`` as a FeatureSpec or a dict."""
    d = config.to_dict()
    d.update(changes)
    if isinstance(d["features"], FeatureSpec):
        d["features"] = d["features"].to_dict()
    return ModelConfig.from_dict(d)


# ----------------------------------------------------------------------------------- generator helpers
def key_names(prefix: str, n_keys: int) -> pa.Array:
    """``prefix-000000`` ... as an Arrow string array (one entry per key)."""
    width = max(6, len(str(n_keys - 1)))
    return pa.array([f"{prefix}-{i:0{width}d}" for i in range(n_keys)], type=pa.string())


def split_counts(
    rng: np.random.Generator, total: int, n_keys: int, minimum: int, spread: float
) -> np.ndarray:
    """Events per key summing to ``total``: ``minimum`` each (if it fits), the rest by lognormal activity."""
    minimum = min(minimum, total // n_keys)
    weights = rng.lognormal(0.0, spread, n_keys)
    rest = rng.multinomial(total - minimum * n_keys, weights / weights.sum())
    return (rest + minimum).astype(np.int64)


def group_starts(counts: np.ndarray) -> np.ndarray:
    """Flat index of each group's first element, for groups of ``counts`` laid out one after another."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def group_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id, position inside the group) of every element of consecutive groups of ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    group = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    pos = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(group_starts(counts), counts)
    return group, pos


def group_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every group (groups of ``counts`` laid out one after another)."""
    values = np.asarray(values)
    counts = np.asarray(counts, dtype=np.int64)
    total = np.cumsum(values)
    starts = group_starts(counts)
    nonempty = counts > 0
    offset = np.zeros(len(counts), dtype=total.dtype)
    offset[nonempty] = total[starts[nonempty]] - values[starts[nonempty]]
    return total - np.repeat(offset, counts)


def spread_first_gaps(rng: np.random.Generator, gap_s: np.ndarray, counts: np.ndarray, max_s: float) -> None:
    """Set each key's first gap (its first event, in seconds after the start) uniform in ``[0, max_s)``, in
    place, so the keys of a generated stream do not all start at once (groups of ``counts`` in ``gap_s``)."""
    gap_s[group_starts(counts)[counts > 0]] = rng.uniform(0, max_s, int((counts > 0).sum()))


def times_from_gaps(gap_s: np.ndarray, counts: np.ndarray, start_ms: int, min_gap_ms: int = 1) -> np.ndarray:
    """Event times (int64 ms) of consecutive per-key groups of ``counts``: gaps in seconds rounded to whole
    milliseconds (at least ``min_gap_ms``), summed per key from ``start_ms``."""
    gap_ms = np.maximum(np.round(gap_s * 1000.0), min_gap_ms).astype(np.int64)
    return start_ms + group_cumsum(gap_ms, counts)


def time_order(key_index: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """Row order of an event-time-sorted stream: by time, then key; a key's own order is kept.

    Inputs are laid out key after key with strictly increasing times per key, so a stable sort on
    (time, key) keeps each key's events in their generated order.
    """
    return np.lexsort((key_index, times_ms))


def assemble_table(
    schema: EventSchema,
    key_prefix: str,
    n_keys: int,
    key_index: np.ndarray,
    times_ms: np.ndarray,
    numeric: Mapping[str, np.ndarray] | None = None,
    vectors: Mapping[str, np.ndarray] | None = None,
    categorical: Mapping[str, tuple[np.ndarray, tuple[str, ...]]] | None = None,
    label: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> pa.Table:
    """Build the Arrow table of a generated stream in ``schema``'s column order, rows taken in ``order``.

    ``categorical`` maps a column to (integer codes, the strings the codes index); strings need not be in
    the schema's vocabulary (unseen values are part of some streams).
    """
    numeric = numeric or {}
    vectors = vectors or {}
    categorical = categorical or {}
    n = len(key_index)
    order = np.arange(n, dtype=np.int64) if order is None else order
    take = pa.array(order)
    arrow = schema.arrow_schema()
    columns: dict[str, pa.Array] = {
        KEY_COLUMN: key_names(key_prefix, n_keys).take(pa.array(key_index[order])),
        TIME_COLUMN: pa.array(np.asarray(times_ms, dtype=np.int64)[order], type=pa.timestamp("ms")),
    }
    for name in schema.numeric:
        columns[name] = pa.array(np.asarray(numeric[name], dtype=np.float64)[order])
    for name, size in schema.vectors:
        flat = np.ascontiguousarray(np.asarray(vectors[name], dtype=np.float32)[order]).reshape(-1)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), size)
    for name, _vocab in schema.categorical:
        codes, strings = categorical[name]
        columns[name] = pa.array(strings, type=pa.string()).take(pa.array(np.asarray(codes)[order]))
    if schema.has_label:
        columns[LABEL_COLUMN] = (
            pa.nulls(n, pa.int64())
            if label is None
            else pa.array(np.asarray(label, dtype=np.int64)).take(take)
        )
    return pa.Table.from_arrays([columns[f.name] for f in arrow], schema=arrow)
