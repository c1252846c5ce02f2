"""The Numenta Anomaly Benchmark's scoring rules, written from its published description (Lavin & Ahmad 2015,
"Evaluating Real-time Anomaly Detection Algorithms"; the NAB repository's scorer and sweeper), for
:mod:`univariate_drift`. Nothing here reads NAB's data.

- **Windows** (:func:`label_windows`): each labelled anomaly point gets a window centred on it, the windows
  of a series together ``window_share`` (10%) of its length (each ``0.1 * n / anomalies`` long); windows
  that overlap are merged.
- **Probationary period**: a series' first 15%, at most 750 points, is not scored (the detector learns there;
  in longer series the rest of the training part is scored).
- **Detections**: points whose score is ``>= threshold``. In a window only the earliest detection counts, a
  true positive worth ``A_TP * sigma(p)``, ``sigma(p) = 2 / (1 + exp(5 p)) - 1`` with ``p`` the position
  relative to the window's end (-1 at its first point, 0 past its last): early detection earns almost 1,
  late little. A window with no detection costs ``A_FN``. A detection outside every window is a false
  positive worth ``A_FP * sigma(p)`` with ``p`` its distance past the previous window's end in window
  widths (so one just behind a window costs little, one far from any costs the full ``A_FP``; before the
  first window it costs the full ``A_FP``).
- **One threshold for all series**, the one that maximizes the summed raw score (:func:`nab_score`).
- **Normalized** so that the null detector (no detection: every window missed) scores 0 and the perfect one
  (a detection at the first point of every window) 100.

Standard profile: ``A_TP = 1``, ``A_FP = 0.11``, ``A_FN = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROBATION_SHARE = 0.15
PROBATION_CAP_POINTS = 5_000  # the probationary period is 15% of at most this many points
WINDOW_SHARE = 0.10


@dataclass(frozen=True)
class Profile:
    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


STANDARD = Profile()


@dataclass(frozen=True)
class Series:
    """One scored series: its point labels' windows ``[(first, last)]`` (inclusive indices) and length."""

    length: int
    windows: tuple[tuple[int, int], ...]

    @property
    def probation(self) -> int:
        return probation_length(self.length)


@dataclass(frozen=True)
class NabResult:
    score: float  # normalized: null 0, perfect 100
    raw: float
    threshold: float
    true_positives: int
    false_positives: int
    missed: int


def probation_length(n: int) -> int:
    """NAB's probationary period: 15% of a series, at most 750 points (15% of 5,000)."""
    return max(1, min(math.floor(PROBATION_SHARE * n), math.floor(PROBATION_SHARE * PROBATION_CAP_POINTS)))


def label_windows(n: int, anomalies: list[int] | np.ndarray) -> tuple[tuple[int, int], ...]:
    """NAB's windows around anomaly points ``anomalies`` of a series of ``n`` points (merged on overlap)."""
    points = sorted(int(a) for a in anomalies)
    if not points:
        return ()
    half = int(WINDOW_SHARE * n / len(points)) // 2
    merged: list[list[int]] = []
    for a in points:
        lo, hi = max(0, a - half), min(n - 1, a + half)
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    p = np.asarray(position, dtype=np.float64)
    return np.where(p > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * p)) - 1.0)


def _point_values(series: Series, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Per point: the window it is in (-1: none) and what detecting it is worth (TP weight or FP cost)."""
    n = series.length
    window_of = np.full(n, -1, np.int64)
    worth = np.full(n, -profile.fp, np.float64)  # before any window: a full false positive
    for w, (lo, hi) in enumerate(series.windows):
        width = hi - lo + 1
        idx = np.arange(lo, hi + 1)
        window_of[idx] = w
        worth[idx] = profile.tp * scaled_sigmoid(-(hi - idx + 1) / width)
        end = series.windows[w + 1][0] if w + 1 < len(series.windows) else n
        after = np.arange(hi + 1, end)
        if after.size:
            past = np.abs(after - hi) / max(width - 1, 1)
            worth[after] = profile.fp * scaled_sigmoid(past)
    return window_of, worth


def nab_score(series: list[Series], scores: list[np.ndarray], profile: Profile = STANDARD) -> NabResult:
    """The best normalized NAB score over one threshold shared by all ``series`` (``scores[i]`` per point)."""
    all_scores, all_window, all_worth = [], [], []
    windows = 0
    for s, sc in zip(series, scores, strict=True):
        if len(sc) != s.length:
            raise ValueError(f"a series of {s.length} points got {len(sc)} scores")
        window_of, worth = _point_values(s, profile)
        keep = np.arange(s.length) >= s.probation
        all_scores.append(np.asarray(sc, np.float64)[keep])
        all_window.append(np.where(window_of[keep] >= 0, window_of[keep] + windows, -1))
        all_worth.append(worth[keep])
        windows += len(s.windows)
    score = np.nan_to_num(np.concatenate(all_scores), nan=-np.inf)
    window = np.concatenate(all_window)
    worth = np.concatenate(all_worth)
    null = -profile.fn * windows
    perfect = profile.tp * float(scaled_sigmoid(-1.0)) * windows
    order = np.argsort(-score, kind="stable")
    best_tp = np.full(windows, np.nan)
    total = null
    best = (total, np.inf, 0, 0)
    tp = fp = 0
    i = 0
    while i < order.size:  # sweep thresholds from the highest score down, one group of ties at a time
        j = i
        value = score[order[i]]
        while j < order.size and score[order[j]] == value:
            k = order[j]
            w = window[k]
            if w < 0:
                total += worth[k]
                fp += 1
            elif np.isnan(best_tp[w]):
                best_tp[w] = worth[k]
                total += profile.fn + worth[k]
                tp += 1
            elif worth[k] > best_tp[w]:
                total += worth[k] - best_tp[w]
                best_tp[w] = worth[k]
            j += 1
        if total > best[0] and np.isfinite(value):
            best = (total, float(value), tp, fp)
        i = j
    raw, threshold, tp, fp = best
    span = perfect - null
    return NabResult(
        score=100.0 * (raw - null) / span if span > 0 else 0.0,
        raw=raw,
        threshold=threshold,
        true_positives=tp,
        false_positives=fp,
        missed=windows - tp,
    )


def nab_at_threshold(
    series: list[Series], detections: list[np.ndarray], profile: Profile = STANDARD
) -> NabResult:
    """The normalized NAB score of fixed detections (truthy = detected, e.g. a model's own alert column)."""
    raw = tp = fp = 0.0
    windows = 0
    for s, det in zip(series, detections, strict=True):
        window_of, worth = _point_values(s, profile)
        det = np.asarray(det, bool).copy()
        det[: s.probation] = False
        outside = det & (window_of < 0)
        raw += float(worth[outside].sum())
        fp += int(outside.sum())
        for w in range(len(s.windows)):
            hit = np.flatnonzero(det & (window_of == w))
            if hit.size:
                raw += float(worth[hit[0]])
                tp += 1
            else:
                raw -= profile.fn
        windows += len(s.windows)
    null = -profile.fn * windows
    span = profile.tp * float(scaled_sigmoid(-1.0)) * windows - null
    return NabResult(
        score=100.0 * (raw - null) / span if span > 0 else 0.0,
        raw=raw,
        threshold=float("nan"),
        true_positives=int(tp),
        false_positives=int(fp),
        missed=windows - int(tp),
    )
