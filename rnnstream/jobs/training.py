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

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from rnnstream.data_dir import DataDir
from rnnstream.jobs import training_plots
from rnnstream.pipelines.spec import GeneratedStream, PipelineSpec, model_config_replace
from rnnstream.rnn_core import metrics as rmetrics
from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.evaluation import fit_model, replay, stateless_config
from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.training import sequences_from_table
from rnnstream.workers.archive_sink import read_archive


class NoTrainingData(ConfigError):
    """There are no events to train on; the message says how to get some."""


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
    """A YAML/JSON run config: ``model:`` (ModelConfig fields), ``training:`` (TrainSettings fields),
    ``tracking_uri:``."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold a mapping (model:, training:, tracking_uri:)")
    unknown = set(doc) - {"model", "training", "tracking_uri"}
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown sections {sorted(unknown)} (use model, training, tracking_uri)"
        )
    return doc


# ------------------------------------------------------------------------------------------------ events
def load_events(spec: PipelineSpec, source: str | Path) -> pa.Table:
    """The pipeline's events under ``source``, in event-time order, in the pipeline's event schema.

    ``source`` is the archive root (``pipeline=<p>/date=<d>/`` partitions, read with
    :func:`read_archive`; a local path or any URI pyarrow knows), or any Parquet file or folder of events
    (rows of other pipelines skipped when it has a ``pipeline`` column). Raises :class:`NoTrainingData`
    when there is nothing.
    """
    src = str(source)
    if "://" not in src and not Path(src).exists():
        raise NoTrainingData(_no_data_message(spec, src))
    try:
        table = read_archive(src, spec.name)
    except FileNotFoundError:
        dataset = ds.dataset(src, format="parquet", partitioning="hive")
        flt = (pc.field("pipeline") == spec.name) if "pipeline" in dataset.schema.names else None
        table = dataset.to_table(filter=flt)
    if table.num_rows == 0:
        raise NoTrainingData(_no_data_message(spec, src))
    arrow_schema = spec.schema.arrow_schema()
    missing = [f.name for f in arrow_schema if f.name not in table.column_names and f.name != LABEL_COLUMN]
    if missing:
        raise ConfigError(f"events under {src} lack the {spec.name} columns {missing}")
    if LABEL_COLUMN in arrow_schema.names and LABEL_COLUMN not in table.column_names:
        table = table.append_column(LABEL_COLUMN, pa.nulls(table.num_rows, pa.int64()))
    table = table.select(arrow_schema.names).cast(arrow_schema)
    return table.take(pc.sort_indices(table, sort_keys=[(TIME_COLUMN, "ascending")]))


def _no_data_message(spec: PipelineSpec, source: str) -> str:
    return (
        f"no archived {spec.name} events under {source}: archive the {spec.name}.events topic first "
        f"(rnnstream archive --pipeline {spec.name} --until-caught-up), point --data at a Parquet dataset, "
        f"or add --generate 20000 to train on a generated stream"
    )


def generate_events(spec: PipelineSpec, num_events: int, seed: int) -> GeneratedStream:
    """The pipeline's generator at its demo density (events per key), ``num_events`` events in all."""
    n_keys = max(4, min(spec.demo_keys, num_events // max(spec.demo_events_per_key, 1)))
    return spec.generate(num_events, n_keys, seed)


def truth_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """Ground truth an archived table carries: its ``label`` column (missing labels as 0)."""
    if LABEL_COLUMN not in table.column_names:
        return {}
    labels = pc.fill_null(table.column(LABEL_COLUMN), 0)
    return {"label": np.asarray(labels.to_numpy(zero_copy_only=False), dtype=np.int64)}


def split_by_time(table: pa.Table, holdout_fraction: float) -> int:
    """The split time (ms): events at or after it (the last ``holdout_fraction`` of events) are held out."""
    times = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
    idx = min(int(len(times) * (1.0 - holdout_fraction)), len(times) - 1)
    return int(np.sort(times)[idx])


# ---------------------------------------------------------------------------------------------- evaluation
def replay_outputs(model: StreamingModel, table: pa.Table, spec: PipelineSpec | None = None) -> np.ndarray:
    """Outputs ``[N, K]`` of every event of ``table`` through the serving path (``evaluation.replay``)."""
    return replay(model, table)


def pipeline_metrics(
    spec: PipelineSpec, outputs: np.ndarray, table: pa.Table, truth: Mapping[str, np.ndarray] | None = None
) -> dict[str, float]:
    """The pipeline's metrics; when the truth its evaluator needs is not there (archived events carry only
    their ``label``), the generic metrics of the head against that label."""
    truth = dict(truth) if truth is not None else truth_from_table(table)
    try:
        return spec.evaluate(table, outputs, truth)
    except KeyError:
        return generic_metrics(outputs, truth, spec.model_config.head)


def generic_metrics(outputs: np.ndarray, truth: Mapping[str, np.ndarray], head: str) -> dict[str, float]:
    """Against ``truth['label']``: accuracy and macro-F1 of the arg-max class (multiclass heads), else
    PR-AUC, ROC-AUC and best F1 of the score column (column 0). Empty without labels of two kinds."""
    y = truth.get("label")
    if y is None or len(y) == 0 or len(np.unique(y)) < 2:
        return {}
    y = np.asarray(y).astype(np.int64)
    outputs = np.asarray(outputs)
    if head == "multiclass":
        predicted = np.argmax(outputs, axis=1)
        return {
            "accuracy": float(rmetrics.accuracy(y, predicted)),
            "macro_f1": float(rmetrics.macro_f1(y, predicted)),
        }
    score = outputs[:, 0].astype(np.float64)
    f1 = rmetrics.best_f1(y, score).f1
    return {
        "pr_auc": float(rmetrics.pr_auc(y, score)),
        "roc_auc": float(rmetrics.roc_auc(y, score)),
        "best_f1": float(f1),
    }


@dataclass(frozen=True)
class Evaluation:
    """Outputs and metrics of one model on the held-out events."""

    metrics: dict[str, float]
    outputs: np.ndarray  # [held-out N, K]


def evaluate_on_holdout(
    spec: PipelineSpec, model: StreamingModel, table: pa.Table, truth: Mapping[str, np.ndarray], split_ms: int
) -> Evaluation:
    """Replay the whole stream (warming states) and compute metrics on the events at or after ``split_ms``."""
    outputs = replay_outputs(model, table, spec)
    held = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy() >= split_ms
    rows = np.flatnonzero(held)
    held_table = table.take(pa.array(rows))
    held_truth = {k: np.asarray(v)[rows] for k, v in truth.items()}
    return Evaluation(pipeline_metrics(spec, outputs[rows], held_table, held_truth), outputs[rows])


# -------------------------------------------------------------------------------------------------- run
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
        baseline = fit_model(
            stateless_config(config),
            train_seqs,
            spec.label_column,
            settings.epochs,
            chunk_len=settings.chunk_len,
            batch_keys=settings.batch_keys,
            lr=settings.learning_rate,
            seed=settings.seed,
            patience=None,
        )
        baseline_eval = evaluate_on_holdout(spec, baseline, table, truth, split_ms)
    primary = spec.primary_metric
    line = f"held-out {primary}: model {evaluation.metrics.get(primary, math.nan):.4f}"
    if baseline_eval is not None:
        line += f", stateless baseline {baseline_eval.metrics.get(primary, math.nan):.4f}"
    progress(line)

    store = tracking.resolve_store(data_dir, request.tracking_uri)
    held_truth = {k: np.asarray(v)[held] for k, v in truth.items()}
    run_id, version = _log_run(
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


def _log_run(
    store, spec, request, config, outcome, evaluation, baseline_eval, data_info, val_table, held_truth
) -> tuple[str, str]:
    """Everything about the run into MLflow, the model registered: (run id, version or "")."""
    import mlflow

    from rnnstream.workers import model_registry, tracking

    primary = spec.primary_metric
    tags = {"rnnstream.primary_metric": primary}
    with tracking.training_run(store, spec.name, outcome.run_name, tags=tags) as run:
        params = {
            "pipeline": spec.name,
            "event_schema_version": spec.schema.version,
            "ray.run_name": outcome.run_name,
            "train.resumed_at_epoch": outcome.resumed_at_epoch,
            **{f"train.{k}": v for k, v in vars(request.settings).items()},
            **tracking.flatten_params(config.to_dict(), prefix="model."),
            **data_info,
        }
        mlflow.log_params(tracking.flatten_params(params))
        tracking.log_epoch_history(outcome.history)
        mlflow.log_metrics({f"eval.{k}": v for k, v in evaluation.metrics.items() if _finite(v)})
        if baseline_eval is not None:
            mlflow.log_metrics({f"baseline.{k}": v for k, v in baseline_eval.metrics.items() if _finite(v)})
        mlflow.log_metrics({k: data_info[k] for k in ("data.train_rows", "data.val_rows", "data.keys")})
        _log_plots(spec, outcome.model, evaluation, baseline_eval, val_table, held_truth)
        meta = {
            **data_info,
            "run_name": outcome.run_name,
            "primary_metric": primary,
            "eval": evaluation.metrics,
            "baseline": baseline_eval.metrics if baseline_eval else {},
        }
        logged = model_registry.log_model_version(
            outcome.model, spec.schema, extra_meta=meta, register=request.register
        )
    return run.info.run_id, logged.version


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _log_plots(spec, model, evaluation, baseline_eval, table, truth) -> None:
    """PR curve / score over time / confusion matrix of the held-out events into ``plots/`` of the run."""
    import mlflow

    plots: dict[str, bytes] = {}
    label = truth.get("label")
    if label is None and "session_label" in truth:
        label = truth["session_label"]
    times = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
    if model.head_kind == "multiclass" and label is not None:
        predicted = np.argmax(evaluation.outputs, axis=1)
        classes = model.config.num_classes
        matrix = training_plots.confusion(np.clip(label, 0, classes - 1), predicted, classes)
        plots["confusion_matrix.png"] = training_plots.confusion_png(matrix, f"{spec.name}: held-out events")
    elif label is not None and len(np.unique(label)) > 1:
        score = evaluation.outputs[:, 0]
        scores = {"model": score}
        if baseline_eval is not None:
            scores["stateless baseline"] = baseline_eval.outputs[:, 0]
        y = (np.asarray(label) > 0).astype(np.int64)
        plots["pr_curve.png"] = training_plots.pr_curve_png(y, scores, f"{spec.name}: held-out PR curve")
        plots["score_over_time.png"] = training_plots.score_over_time_png(
            times, y, score, f"{spec.name}: held-out scores"
        )
        threshold = training_plots.best_f1_threshold(y, score)
        matrix = training_plots.confusion(y, (score >= threshold).astype(np.int64), 2)
        plots["confusion_matrix.png"] = training_plots.confusion_png(
            matrix, f"at best-F1 threshold {threshold:.3f}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in plots.items():
            (Path(tmp) / name).write_bytes(data)
        if plots:
            mlflow.log_artifacts(tmp, artifact_path="plots")
        both = {"model": evaluation.metrics, "baseline": baseline_eval.metrics if baseline_eval else {}}
        (Path(tmp) / "evaluation.json").write_text(json.dumps(both, indent=2))
        mlflow.log_artifact(str(Path(tmp) / "evaluation.json"))
