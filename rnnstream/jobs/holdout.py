"""A model's metrics on the held-out events, measured through the serving path.

The whole stream is replayed through :class:`StreamScorer` (``evaluation.replay``), so the held-out events
are scored with states warmed by everything before them, the way the deployed model meets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rnnstream.jobs.training_data import truth_from_table
from rnnstream.pipelines.spec import PipelineSpec
from rnnstream.rnn_core import metrics as rmetrics
from rnnstream.rnn_core.evaluation import replay
from rnnstream.rnn_core.event_schema import TIME_COLUMN
from rnnstream.rnn_core.model import StreamingModel


def replay_outputs(model: StreamingModel, table: pa.Table, spec: PipelineSpec | None = None) -> np.ndarray:
    """Outputs ``[N, K]`` of every event of ``table`` through the serving path (``evaluation.replay``),
    with the pipeline's key TTL when ``spec`` is given (so held-out metrics measure what serves)."""
    return replay(model, table, key_ttl_ms=None if spec is None else spec.serving.key_ttl_ms)


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
