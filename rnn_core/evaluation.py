"""Train a model on events, replay a stream through the serving code, compare with the stateless baseline.

Pure rnn_core (torch, numpy, pyarrow): used by tests, benchmarks, the Ray Train loop, ``fit-file``, the demo.

- :func:`fit_model` builds a :class:`StreamingModel` from a config, fits its input normalization (and, for a
  forecast head, the score calibration) on the training events, and trains it by truncated BPTT, carrying
  each key's state across chunks (``rnn_core.training``).
- :func:`replay` scores a table the way a worker does: one :class:`KeyedStateStore`, events in event-time
  order across keys, micro-batches through :meth:`StreamScorer.score` (repeated keys applied in waves).
  Metrics computed from its outputs are the metrics of the serving path, not of an offline shortcut.
- :func:`compare_with_baseline` trains the model and its stateless twin (same size, state zeroed before
  every event, so it sees each event alone) on the same events, replays the same stream through both, and
  returns both sets of metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.rnn_core.config import ConfigError, FeatureSpec, ModelConfig
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer
from rnnstream.rnn_core.training import KeySequences, fit, seed_everything, sequences_from_table

DEFAULT_REPLAY_BATCH = 1024

EvaluateOutputs = Callable[[np.ndarray], dict[str, float]]


def event_times_ms(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The ``time`` column as int64 milliseconds."""
    col = table.column(TIME_COLUMN)
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("ms"))
    return np.asarray(pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def replay(
    model: StreamingModel,
    table: pa.Table | pa.RecordBatch,
    feature_spec: FeatureSpec | None = None,
    batch_size: int = DEFAULT_REPLAY_BATCH,
    *,
    scorer: StreamScorer | None = None,
    key_ttl_ms: int | None = None,
) -> np.ndarray:
    """Score every event of ``table`` through the streaming path; returns ``float32 [N, K]`` in row order.

    Events are applied in event-time order across keys (a stable sort by ``time``, so a table already in
    event-time order is replayed as it is), ``batch_size`` events per micro-batch, each key's state kept in
    one :class:`KeyedStateStore`. Pass ``scorer`` to continue states that an earlier replay (or live
    traffic) left, e.g. to score a test period right after the training period; by default a fresh store
    starts every key from zero. ``key_ttl_ms`` expires idle keys as serving does (the new scorer's TTL).
    ``feature_spec`` defaults to the model's. Column ``k`` of the result is ``model.output_names()[k]``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    spec = feature_spec if feature_spec is not None else model.config.features
    if spec.input_size != model.config.features.input_size:
        raise ConfigError(
            f"feature spec gives {spec.input_size} inputs, the model takes {model.config.features.input_size}"
        )
    if scorer is None:
        scorer = StreamScorer(model, KeyedStateStore(model.config.state_shape), key_ttl_ms=key_ttl_ms)
    n = table.num_rows
    if n == 0:
        return np.zeros((0, len(scorer.output_names)), np.float32)
    times = event_times_ms(table)
    order = None if bool(np.all(times[1:] >= times[:-1])) else np.argsort(times, kind="stable")
    if order is not None:
        table = table.take(pa.array(order))
        times = times[order]
    x = features_from_arrow(table, spec)
    keys = table.column(KEY_COLUMN).combine_chunks()
    if not pa.types.is_string(keys.type):
        keys = pc.cast(keys, pa.string())
    outputs = np.empty((n, len(scorer.output_names)), np.float32)
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        outputs[start:end] = scorer.score(keys.slice(start, end - start), times[start:end], x[start:end])
    if order is not None:
        restored = np.empty_like(outputs)
        restored[order] = outputs
        outputs = restored
    return outputs


def fit_model(
    config: ModelConfig,
    train_table: pa.Table | KeySequences,
    label_column: str | None = None,
    epochs: int = 10,
    *,
    chunk_len: int = 64,
    batch_keys: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    validation_table: pa.Table | KeySequences | None = None,
    patience: int | None = 3,
    progress: Callable[[dict[str, float]], None] | None = None,
    weight_decay: float = 0.0,
) -> StreamingModel:
    """A new :class:`StreamingModel` of ``config`` trained on ``train_table`` (events of many keys).

    Fits the input normalization on the training events, trains ``epochs`` epochs with Adam by truncated
    BPTT (chunks of ``chunk_len`` events, ``batch_keys`` keys a batch, each key's state carried from one
    chunk to the next), and for a forecast head fits the error scale and score calibration on the training
    events. ``label_column`` names the label of binary and multiclass heads (None for forecast and
    next-token heads, which learn from the events themselves). With ``validation_table`` training stops
    after ``patience`` epochs without a better validation loss and keeps the best weights. Seeded: the same
    inputs give the same model. Returned in eval mode.
    """
    if config.head in ("binary", "multiclass") and label_column is None:
        raise ConfigError(f"a {config.head} head learns from labels: pass label_column (e.g. 'label')")
    spec = config.features
    label = label_column if config.head in ("binary", "multiclass") else None
    sequences = _as_sequences(train_table, spec, label)
    if len(sequences) == 0:
        raise ValueError("fit_model needs at least one training event")
    validation = None if validation_table is None else _as_sequences(validation_table, spec, label)
    seed_everything(seed)  # the initial weights too, not only the batches
    model = StreamingModel(config)
    fit(
        model,
        sequences,
        epochs=epochs,
        lr=lr,
        chunk_len=chunk_len,
        batch_keys=batch_keys,
        seed=seed,
        progress=progress,
        validation=validation if validation is not None and len(validation) else None,
        patience=patience,
        weight_decay=weight_decay,
    )
    model.eval()
    return model


def _as_sequences(data: pa.Table | KeySequences, spec: FeatureSpec, label_column: str | None) -> KeySequences:
    if isinstance(data, KeySequences):
        return data
    return sequences_from_table(data, spec, label_column)


def stateless_config(config: ModelConfig) -> ModelConfig:
    """The baseline of ``config``: same cell, size and head, state zeroed before every event."""
    d = config.to_dict()
    d["stateless"] = True
    return ModelConfig.from_dict(d)


@dataclass
class BaselineComparison:
    """Metrics of a stateful model and of its same-size stateless baseline on the same replayed stream."""

    stateful: dict[str, float]
    stateless: dict[str, float]
    primary_metric: str
    stateful_model: StreamingModel = field(repr=False)
    stateless_model: StreamingModel = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """Stateful minus stateless on the primary metric (higher is better)."""
        return self.stateful[self.primary_metric] - self.stateless[self.primary_metric]


def compare_with_baseline(
    config: ModelConfig,
    train_table: pa.Table,
    replay_table: pa.Table,
    evaluate: EvaluateOutputs,
    primary_metric: str,
    label_column: str | None = None,
    epochs: int = 10,
    *,
    chunk_len: int = 64,
    batch_keys: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    batch_size: int = DEFAULT_REPLAY_BATCH,
    baseline_epochs: int | None = None,
) -> BaselineComparison:
    """Train ``config`` and its stateless twin on ``train_table``, replay ``replay_table`` through both.

    ``evaluate(outputs)`` receives the replay outputs ``[N, K]`` of all ``replay_table`` rows and returns
    metrics; the caller decides which rows count (e.g. replay a whole stream so states are warm, and score
    only the held-out period after the training period). Both models get the same data, seed and epochs
    (``baseline_epochs`` overrides the baseline's).
    """
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, float]] = {}
    models: dict[str, StreamingModel] = {}
    for name, cfg, n_epochs in (
        ("stateful", config, epochs),
        ("stateless", stateless_config(config), epochs if baseline_epochs is None else baseline_epochs),
    ):
        started = time.perf_counter()
        model = fit_model(
            cfg,
            train_table,
            label_column,
            n_epochs,
            chunk_len=chunk_len,
            batch_keys=batch_keys,
            lr=lr,
            seed=seed,
        )
        seconds[f"{name}_fit"] = time.perf_counter() - started
        started = time.perf_counter()
        outputs = replay(model, replay_table, batch_size=batch_size)
        seconds[f"{name}_replay"] = time.perf_counter() - started
        results[name] = evaluate(outputs)
        models[name] = model
    return BaselineComparison(
        stateful=results["stateful"],
        stateless=results["stateless"],
        primary_metric=primary_metric,
        stateful_model=models["stateful"],
        stateless_model=models["stateless"],
        seconds=seconds,
    )
