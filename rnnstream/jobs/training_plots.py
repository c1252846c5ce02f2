"""PNG plots of an evaluation for MLflow and the review page: PR curve, scores over time, confusion matrix.

Each function takes plain arrays (one entry per held-out event) and returns PNG bytes, drawn with
matplotlib's non-interactive Agg backend so it works on servers and in Ray workers.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def precision_recall(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct threshold, highest score first."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    y = np.asarray(label)[order] > 0
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    positives = max(int(y.sum()), 1)
    return tp / np.maximum(tp + fp, 1), tp / positives


def pr_curve_png(label: np.ndarray, scores: dict[str, np.ndarray], title: str) -> bytes:
    """Precision-recall curves of several scorers (e.g. the model and the stateless baseline)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, score in scores.items():
        precision, recall = precision_recall(label, score)
        ax.plot(recall, precision, label=name)
    base_rate = float(np.mean(np.asarray(label) > 0)) if len(label) else 0.0
    ax.axhline(base_rate, color="grey", linestyle=":", label=f"positive rate {base_rate:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def score_over_time_png(times_ms: np.ndarray, label: np.ndarray, score: np.ndarray, title: str) -> bytes:
    """Scores of held-out events against time, positives highlighted."""
    t = (np.asarray(times_ms, dtype=np.int64) - int(np.min(times_ms))) / 3_600_000 if len(times_ms) else []
    y = np.asarray(label) > 0
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.scatter(np.asarray(t)[~y], np.asarray(score)[~y], s=2, alpha=0.3, label="label 0")
    ax.scatter(np.asarray(t)[y], np.asarray(score)[y], s=4, alpha=0.8, color="tab:red", label="label 1")
    ax.set(xlabel="hours into the held-out range", ylabel="score", title=title)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    return _png(fig)


def confusion(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[actual, predicted]``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return m


def confusion_png(matrix: np.ndarray, title: str, labels: list[str] | None = None) -> bytes:
    """A confusion matrix with counts in the cells (rows: actual, columns: predicted)."""
    n = matrix.shape[0]
    labels = labels or [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            dark = matrix[i, j] > matrix.max() / 2
            ax.text(
                j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8, color="w" if dark else "k"
            )
    ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return _png(fig)


def best_f1_threshold(label: np.ndarray, score: np.ndarray) -> float:
    """The score threshold with the best F1 (flag events with score >= threshold)."""
    if len(score) == 0:
        return 0.5
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    sorted_score = np.asarray(score, dtype=np.float64)[order]
    precision, recall = precision_recall(label, score)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(sorted_score[int(np.argmax(f1))])
