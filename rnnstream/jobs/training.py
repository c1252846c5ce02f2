"""One training run of a pipeline's model, from events to a registered MLflow model version.

1. Events: the pipeline's Parquet archive (``<data>/archive/pipeline=<p>/date=<d>/``), a given Parquet path,
   or a stream from the pipeline's generator (``generate``); put in event-time order.
2. Split by event time: the last ``holdout_fraction`` of the time range is held out.
3. Distributed training with Ray Train (:mod:`rnnstream.workers.train_loop`): per-key truncated BPTT,
   keys sharded across workers, one checkpoint per epoch; forecast heads then get their score calibration.
4. A stateless baseline of the same size, trained on single events, for comparison.
5. Evaluation through the serving path: the whole stream is replayed through :class:`StreamScorer`
   (``evaluation.replay``; the held-out range is scored with states warmed by everything before it), and
   the pipeline's metrics are computed on the held-out events, for the model and for the baseline.
6. MLflow: params, per-epoch metrics, evaluation and baseline metrics, data range and row counts, the git
   commit, plots, and the model, registered as a new version of ``rnnstream-<pipeline>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic.dataclasses import dataclass as section

from rnnstream.data_dir import DataDir
from rnnstream.jobs.holdout import evaluate_on_holdout
from rnnstream.jobs.stateless_baseline import fit_stateless_baseline
from rnnstream.jobs.training_data import (
    NoTrainingData,
    generate_events,
    load_events,
    split_by_time,
    truth_from_table,
)
from rnnstream.jobs.training_record import log_training_run
from rnnstream.pipelines.spec import PipelineSpec, model_config_replace
from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.training import sequences_from_table
from rnnstream.run_config import AtLeastOne


@dataclass(frozen=True)
class TrainSettings:
    """How to train: epochs, TBPTT chunking, optimizer, workers, hold-out (defaults from the pipeline)."""

    epochs: int
    chunk_len: int
    batch_keys: int
    learning_rate: float
    workers: int = 2
    use_gpu: bool = False
    holdout_fraction: float = 0.2
    seed: int = 0
    baseline: bool = True
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.chunk_len < 1 or self.batch_keys < 1 or self.workers < 1:
            raise ConfigError("epochs, chunk_len, batch_keys and workers must all be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")


def default_settings(spec: PipelineSpec, **overrides: Any) -> TrainSettings:
    """The pipeline's training defaults with ``overrides`` (None values ignored)."""
    t = spec.training
    base = {
        "epochs": t.epochs,
        "chunk_len": t.chunk_len,
        "batch_keys": t.batch_keys,
        "learning_rate": t.learning_rate,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(base) - set(TrainSettings.__dataclass_fields__)
    if unknown:
        known = ", ".join(sorted(TrainSettings.__dataclass_fields__))
        raise ConfigError(f"unknown training settings {sorted(unknown)} (known: {known})")
    return TrainSettings(**base)


def load_config_file(path: Path) -> dict[str, Any]:
    """``train --config``: a YAML/JSON file of ``model:`` (ModelConfig fields), ``training:`` (TrainSettings
    fields) and ``tracking_uri:``, read by the one reader and checked by pydantic (one-line ConfigError)."""
    from dataclasses import asdict

    from rnnstream.workers.config_document import read_config_mapping, validated

    doc = read_config_mapping(path, "a training file must be a mapping of model:, training:, tracking_uri:")
    checked = validated(_TrainingFile, doc, str(path), _TRAINING_FILE_KEYS)
    training = asdict(checked.training) if checked.training is not None else {}
    return {
        "model": dict(checked.model or {}),
        "training": {k: v for k, v in training.items() if v is not None},
        "tracking_uri": checked.tracking_uri,
    }


@section(frozen=True, config=ConfigDict(extra="forbid"))
class _TrainingSection:
    """What ``training:`` may set: :class:`TrainSettings` fields, each optional (the pipeline's default)."""

    epochs: AtLeastOne | None = None
    chunk_len: AtLeastOne | None = None
    batch_keys: AtLeastOne | None = None
    learning_rate: Annotated[float, Field(gt=0, strict=True)] | None = None
    workers: AtLeastOne | None = None
    use_gpu: StrictBool | None = None
    holdout_fraction: Annotated[float, Field(gt=0, lt=1, strict=True)] | None = None
    seed: StrictInt | None = None
    baseline: StrictBool | None = None
    threads_per_worker: AtLeastOne | None = None


@section(frozen=True, config=ConfigDict(extra="forbid"))
class _TrainingFile:
    model: dict[str, Any] | None = None  # checked against ModelConfig when the model is built
    training: _TrainingSection | None = None
    tracking_uri: StrictStr | None = None


_TRAINING_FILE_KEYS = {
    "": ("model", "training", "tracking_uri"),
    "training": tuple(f.name for f in fields(_TrainingSection)),
}


@dataclass(frozen=True)
class TrainRequest:
    """What ``rnnstream train`` asks for."""

    pipeline: str
    settings: TrainSettings
    data: str | Path | None = None
    generate: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    resume: str | None = None  # a run name, or "latest"
    tracking_uri: str | None = None
    register: bool = True
    run_name: str | None = None
    storage: str | None = None  # Ray Train storage_path (default <data>/ray-train); shared in a cluster


@dataclass(frozen=True)
class TrainReport:
    run_id: str
    run_name: str
    version: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    history: list[dict[str, float]]
    data: dict[str, Any]
    resumed_at_epoch: int = 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def run_training(
    spec: PipelineSpec,
    request: TrainRequest,
    data_dir: DataDir,
    progress: Callable[[str], None] = print,
) -> TrainReport:
    """Train, evaluate, log and register one model of ``spec``; see the module docstring for the steps."""
    from rnnstream.workers import tracking

    settings = request.settings
    config = spec.model_config
    if request.model_overrides:
        config = model_config_replace(config, **request.model_overrides)
    table, truth, source = _events(spec, request, data_dir)
    split_ms = split_by_time(table, settings.holdout_fraction)
    times = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
    held = times >= split_ms
    if held.all() or not held.any():
        raise NoTrainingData(f"{table.num_rows} events span too little time to hold out a later part")
    train_table = table.filter(pa.array(~held))
    val_table = table.filter(pa.array(held))
    train_seqs = sequences_from_table(train_table, config.features, spec.label_column)
    data_info = {
        "data.source": source,
        "data.start": _iso(int(times.min())),
        "data.end": _iso(int(times.max())),
        "data.split": _iso(split_ms),
        "data.train_rows": int(train_table.num_rows),
        "data.val_rows": int(val_table.num_rows),
        "data.keys": len(pc.unique(table.column(KEY_COLUMN))),
        "data.train_keys": len(train_seqs),
    }
    progress(
        f"{spec.name}: {table.num_rows} events of {data_info['data.keys']} keys, "
        f"{data_info['data.start']} .. {data_info['data.end']}; "
        f"held out from {data_info['data.split']} ({val_table.num_rows} events)"
    )
    outcome = _train_distributed(
        spec, request, data_dir, config, train_seqs, train_table, val_table, progress
    )
    model = outcome.model
    if model.head_kind == "forecast" and len(train_seqs):
        model.fit_score_calibration(list(train_seqs.x))

    evaluation = evaluate_on_holdout(spec, model, table, truth, split_ms)
    baseline_eval = None
    if settings.baseline:
        progress("training the stateless baseline (same size, one event at a time)")
        baseline = fit_stateless_baseline(config, train_seqs, spec.label_column, settings)
        baseline_eval = evaluate_on_holdout(spec, baseline, table, truth, split_ms)
    primary = spec.primary_metric
    line = f"held-out {primary}: model {evaluation.metrics.get(primary, math.nan):.4f}"
    if baseline_eval is not None:
        line += f", stateless baseline {baseline_eval.metrics.get(primary, math.nan):.4f}"
    progress(line)

    store = tracking.resolve_store(data_dir, request.tracking_uri)
    held_truth = {k: np.asarray(v)[held] for k, v in truth.items()}
    run_id, version = log_training_run(
        store, spec, request, config, outcome, evaluation, baseline_eval, data_info, val_table, held_truth
    )
    if version:
        progress(f"registered {registered_name(spec)} version {version} (run {run_id})")
    return TrainReport(
        run_id=run_id,
        run_name=outcome.run_name,
        version=version,
        metrics=evaluation.metrics,
        baseline_metrics=baseline_eval.metrics if baseline_eval else {},
        history=outcome.history,
        data=data_info,
        resumed_at_epoch=outcome.resumed_at_epoch,
    )


def registered_name(spec: PipelineSpec) -> str:
    from rnnstream.workers.model_registry import registered_model_name

    return registered_model_name(spec.name)


def _events(
    spec: PipelineSpec, request: TrainRequest, data_dir: DataDir
) -> tuple[pa.Table, dict[str, np.ndarray], str]:
    """(events in event-time order, ground truth per row, where they came from)."""
    if request.generate > 0:
        stream = generate_events(spec, request.generate, request.settings.seed)
        return stream.table, dict(stream.truth), f"generated:{request.generate}:seed={request.settings.seed}"
    path = request.data or data_dir.archive
    table = load_events(spec, path)
    return table, truth_from_table(table), str(path)


def _train_distributed(spec, request, data_dir, config, train_seqs, train_table, val_table, progress):
    """Stage the split events next to the Ray Train runs, pick the run name, run Ray Train."""
    from rnnstream.workers import train_loop

    settings = request.settings
    storage = train_loop.TrainStorage(request.storage or str(data_dir.ray_train))
    if request.resume:
        run_name = storage.latest(spec.name) if request.resume == "latest" else request.resume
        if not run_name or not storage.run_exists(run_name):
            raise ConfigError(
                f"no training run {request.resume!r} of {spec.name} under {storage.root} to resume"
            )
    else:
        run_name = request.run_name or train_loop.new_run_name(spec.name)
    train_loop.ensure_ray()
    train_loop.check_capacity(settings.workers, settings.use_gpu)
    storage.remember(spec.name, run_name)
    staged = storage.stage(run_name, {"train": train_table, "heldout": val_table})
    start = train_loop.initial_model(config, train_seqs, settings.seed)
    loop_config = train_loop.TrainLoopConfig(
        initial_model=train_loop.pack(start),
        train_path=staged["train"],
        val_path=staged["heldout"],
        label_column=spec.label_column,
        epochs=settings.epochs,
        chunk_len=settings.chunk_len,
        batch_keys=settings.batch_keys,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        threads_per_worker=settings.threads_per_worker,
    )
    gpus = " with GPUs" if settings.use_gpu else ""
    resuming = " (resuming)" if request.resume else ""
    progress(f"training {run_name}{resuming} on {settings.workers} Ray Train worker(s){gpus}")
    outcome = train_loop.launch(
        loop_config, storage.ray_storage_path, run_name, settings.workers, settings.use_gpu
    )
    storage.unstage(run_name)  # a --resume stages the events again
    for h in outcome.history:
        progress(
            f"  epoch {int(h['epoch'])}: train_loss {h['train_loss']:.4f} val_loss {h['val_loss']:.4f} "
            f"({h['sequences_per_s']:.0f} sequences/s)"
        )
    return outcome
