"""Evaluation metrics for scored streams, in numpy only (no sklearn at run time).

Score metrics take ``y_true`` (0/1 labels) and ``scores`` (higher = more likely positive) and flag an event
when ``score >= threshold``. Threshold sweeps visit every distinct score, so ties are never split.
Point-adjusted metrics and detection delays work on anomaly *segments*: maximal runs of consecutive positive
labels within one series (pass ``series`` ids when several keys' streams are concatenated).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class F1Point(NamedTuple):
    """The best F1 over all thresholds and where it is reached (flag when ``score >= threshold``)."""

    f1: float
    threshold: float
    precision: float
    recall: float


def _labels_scores(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true ({y.size}) and scores ({s.size}) differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    return y.astype(np.int64), s


def _sweep(
    scores: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with the positive and negative weight flagged at each."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(pos_weight[order], dtype=np.float64)
    fp = np.cumsum(neg_weight[order], dtype=np.float64)
    last = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, bool)
    return s[last], tp[last], fp[last]


def pr_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: sum over thresholds of
    (recall step) x precision. NaN when there is no positive."""
    y, s = _labels_scores(y_true, scores)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    _, tp, fp = _sweep(s, y, 1 - y)
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half). NaN unless both classes occur."""
    y, s = _labels_scores(y_true, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, tp, fp = _sweep(s, y, 1 - y)
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / negatives]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def recall_at_fpr(y_true: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """The highest recall of any threshold whose false positive rate is at most ``max_fpr``.

    NaN when there is no positive; with no negatives every threshold qualifies (recall 1).
    """
    y, s = _labels_scores(y_true, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0:
        return float("nan")
    _, tp, fp = _sweep(s, y, 1 - y)
    fpr = fp / negatives if negatives else np.zeros_like(fp)
    ok = fpr <= max_fpr
    return float(tp[ok].max() / positives) if ok.any() else 0.0


def _best_f1(thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, positives: float) -> F1Point:
    if positives == 0 or thresholds.size == 0:
        return F1Point(0.0, float("inf"), 0.0, 0.0)
    f1 = 2.0 * tp / (tp + fp + positives)
    i = int(np.argmax(f1))  # first maximum = the highest threshold reaching it
    precision = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
    return F1Point(float(f1[i]), float(thresholds[i]), float(precision), float(tp[i] / positives))


def best_f1(y_true: np.ndarray, scores: np.ndarray) -> F1Point:
    """The threshold with the best point-wise F1; (0, inf, 0, 0) when there is no positive."""
    y, s = _labels_scores(y_true, scores)
    return _best_f1(*_sweep(s, y, 1 - y), positives=float(y.sum()))


def anomaly_segments(y_true: np.ndarray, series: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of each maximal run of positive labels within one series."""
    y = np.asarray(y_true).reshape(-1).astype(bool)
    if y.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_series = np.zeros(y.size, bool)
    if series is not None:
        ids = np.asarray(series).reshape(-1)
        if ids.size != y.size:
            raise ValueError(f"series ({ids.size}) and y_true ({y.size}) differ in length")
        new_series[1:] = ids[1:] != ids[:-1]
    prev = np.r_[False, y[:-1]] & ~new_series
    nxt = np.r_[y[1:], False] & ~np.r_[new_series[1:], True]
    starts = np.flatnonzero(y & ~prev)
    ends = np.flatnonzero(y & ~nxt) + 1
    return starts, ends


def best_f1_point_adjusted(
    y_true: np.ndarray, scores: np.ndarray, series: np.ndarray | None = None
) -> F1Point:
    """Best F1 under point adjustment: a true anomaly segment counts as wholly detected when any of its
    points is flagged (the usual protocol for time-series anomaly benchmarks); normal points count as is."""
    y, s = _labels_scores(y_true, scores)
    starts, ends = anomaly_segments(y, series)
    if starts.size == 0:
        return F1Point(0.0, float("inf"), 0.0, 0.0)
    # reduceat over [start, next start) also spans the normal points after a segment: mask them out
    masked = np.where(y == 1, s, -np.inf)
    segment_max = np.maximum.reduceat(masked, starts)
    lengths = (ends - starts).astype(np.float64)
    normal = y == 0
    items = np.r_[segment_max, s[normal]]
    pos_w = np.r_[lengths, np.zeros(int(normal.sum()))]
    neg_w = np.r_[np.zeros(starts.size), np.ones(int(normal.sum()))]
    return _best_f1(*_sweep(items, pos_w, neg_w), positives=float(lengths.sum()))


def detection_delay(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    series: np.ndarray | None = None,
) -> np.ndarray:
    """Per true anomaly segment: events from its start to its first flag (``score >= threshold``) inside
    the segment, 0 = flagged at once; NaN when the segment is never flagged."""
    y, s = _labels_scores(y_true, scores)
    starts, ends = anomaly_segments(y, series)
    delays = np.full(starts.size, np.nan)
    flagged = np.flatnonzero(s >= threshold)
    first = np.searchsorted(flagged, starts)  # first flag at or after each start
    has = first < flagged.size
    hit = np.zeros(starts.size, bool)
    hit[has] = flagged[first[has]] < ends[has]
    delays[hit] = flagged[first[hit]] - starts[hit]
    return delays


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of events whose predicted class equals the true one (NaN for no events)."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true ({y.size}) and y_pred ({p.size}) differ in length")
    return float(np.mean(y == p)) if y.size else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: every class in ``y_true`` or ``y_pred``);
    a class never predicted nor present scores 0."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true ({y.size}) and y_pred ({p.size}) differ in length")
    classes = np.union1d(y, p) if labels is None else np.asarray(labels).reshape(-1)
    if classes.size == 0:
        return float("nan")
    f1s = []
    for c in classes:
        tp = np.count_nonzero((y == c) & (p == c))
        denom = np.count_nonzero(y == c) + np.count_nonzero(p == c)
        f1s.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def precision_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of positives among the ``k`` highest scores (ties broken by event order)."""
    y, s = _labels_scores(y_true, scores)
    if k <= 0:
        raise ValueError("k must be positive")
    k = min(k, y.size)
    if k == 0:
        return float("nan")
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].mean())
