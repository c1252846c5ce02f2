"""What a training run leaves in MLflow: params, per-epoch and evaluation metrics, data range, plots of the
held-out events, the evaluation as JSON, and the model, registered as a new version."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rnnstream.jobs import training_plots
from rnnstream.rnn_core.event_schema import TIME_COLUMN


def log_training_run(
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
            "key_ttl_ms": spec.serving.key_ttl_ms,  # the pyfunc expires keys as serving does
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
