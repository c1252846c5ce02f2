"""The decision threshold ``fit-file`` stores with a model, chosen on training data alone.

A score is only useful to an operator with a line to cross; a line picked on the labels of the data being
judged is an upper bound, never a setting. So ``fit-file`` picks it on its own held-out part (each key's
tail, scored with the state carried from its training part), and ``score-file`` writes ``alert`` beside
``score``:

- labelled data (a binary head) whose held-out part holds both classes: the threshold of the best F1 there;
- otherwise (next-token heads, labels of one class): the lowest threshold that flags at most ``target_fpr``
  (default 1%) of the held-out events taken as normal (the negatives when labelled); for session-like data,
  of the held-out *sessions* (a session alerts when any of its events does, so the threshold is taken over
  each held-out key's highest score);
- forecast heads: the same share, of a normal distribution fitted robustly (median and MAD) to the held-out
  scores' anomaly ``z`` (:func:`~rnnstream.rnn_core.anomaly_likelihood.likelihood_z`; the static score,
  uniform on training errors, maps to a standard normal the same way). Unlabelled held-out data holds
  anomalies of its own (server metrics' training periods do), and an empirical 99th percentile then measures
  those, not the normal behaviour; a few hundred held-out events of a smoothed score hold only a few dozen
  independent ones, too few for a 1% tail. The median and MAD of the bulk are stable in both cases.
  Measured on the same scored streams (``benchmarks/real_data.py --quick``'s models at b092236), F1 at the
  stored threshold with the empirical percentile -> with this rule: SMD 0.365 -> 0.380 (0.72x -> 0.75x of
  the best threshold on test labels), ASD 0.425 -> 0.448 (0.83x -> 0.87x).

An event alerts when ``score >= threshold``. Multiclass heads have no threshold (the class is the argmax).

Measured and not kept (``benchmarks/alert_rules.py`` on the scores of 308a94c, every line chosen on the
held-out tails alone; F1 at the line, mean over entities, ASD / SMD, stored rule 0.448 / 0.380 of best-F1
0.513 / 0.504): *alert hysteresis* (open at this threshold, stay open while the score is above the robust
normal's line at k x the target FPR) k = 2, 5, 10: ASD 0.438 / 0.417 / 0.385, SMD 0.394 / 0.417 / 0.435;
*holding* an alert open n events after a crossing, n = 2, 5, 10: ASD 0.438 / 0.419 / 0.392, SMD 0.392 /
0.406 / 0.421; a *per-key* line from each key's own held-out tail: ASD 0.385, SMD 0.446; a line at 0.5x / 2x
/ 5x the target: ASD 0.450 / 0.435 / 0.400, SMD 0.354 / 0.404 / 0.441. Every rule that alerts more helps
SMD (whose test periods are up to 16% anomalous) and costs ASD: the events hysteresis adds are anomalous
36% of the time on SMD but 10% on ASD (anomaly rate 4.6%); 78% of ASD's added false alerts lengthen false
alarms far from any anomaly, 22% the score's lag after an anomaly's end (the stored line still alerts on 59%
of the first normal events after an ASD anomaly, 32% ten events later, 15% twenty later). No rule chosen
on training data alone improved both, so the plain threshold stays. (Same direction on the scores of a
relearning variant of the likelihood recursion: SMD 0.306 -> 0.342 / 0.358 with hysteresis k = 5 / 10, ASD
0.452 -> 0.428 / 0.396.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from rnnstream.files.columns import DEFAULT_TARGET_FPR  # defined there: fit-file --help loads no torch
from rnnstream.rnn_core import metrics
from rnnstream.rnn_core.anomaly_likelihood import likelihood_score_of, likelihood_z

BEST_F1 = "best_f1_on_holdout"
TARGET_FPR = "target_fpr_on_holdout"
TARGET_FPR_ALL_EVENTS = "target_fpr_on_all_events"  # too few held out: every event after each key's warm-up
EMPIRICAL = "empirical"  # the share of the held-out scores themselves
ROBUST_NORMAL = "robust_normal"  # the share of a normal fitted to the median and MAD of their anomaly z
_MAD_TO_SD = 1.4826  # a normal's standard deviation over its median absolute deviation
# A forecast threshold is never at or below the neutral score 0.5 (z = 0: errors as usual, and each event of
# a key's warm-up): held-out anomaly z sit a little below 0 (the smaller of two z), and on some short series
# their fitted 1% line fell below 0.5, so a fresh key's whole warm-up alerted (10 of the first 10 points).
ABOVE_NEUTRAL = float(np.nextafter(np.float32(0.5), np.float32(1.0)))


@dataclass(frozen=True)
class AlertThreshold:
    """Alert when ``score >= value``; ``rule`` says how it was chosen, on how many held-out events."""

    value: float
    rule: str
    events: int
    target_fpr: float | None = None
    null: str = EMPIRICAL

    def describe(self) -> str:
        how = f"best F1 on {self.events:,} held-out events" if self.rule == BEST_F1 else (
            f"at most {self.target_fpr:.2%} of {self.events:,} "
            + ("events (each key's after its warm-up)" if self.rule == TARGET_FPR_ALL_EVENTS
               else "held-out normal events/sessions")
            + " flagged"
            + (" under a normal fitted to their median and MAD" if self.null == ROBUST_NORMAL else "")
            + (" as the model's next-token probabilities expect" if self.null == "model_expected" else "")
        )  # fmt: skip
        return f"alert when score >= {self.value:.6g} ({how})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> AlertThreshold | None:
        return cls(**d) if d else None


def choose_threshold(
    head: str, scores: np.ndarray, labels: np.ndarray | None = None, target_fpr: float = DEFAULT_TARGET_FPR
) -> AlertThreshold | None:
    """The threshold for ``head`` from held-out ``scores`` (and their 0/1 ``labels``, NaN = unknown)."""
    if head == "multiclass" or scores.size == 0:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    if labels is not None:
        known = np.isfinite(labels)
        scores, labels = scores[known], np.asarray(labels[known], dtype=np.int64)
        if 0 < labels.sum() < labels.size:
            point = metrics.best_f1(labels, scores)
            return AlertThreshold(point.threshold, BEST_F1, int(scores.size))
        scores = scores[labels == 0]
    normal = np.sort(scores[np.isfinite(scores)])[::-1]
    if normal.size == 0:
        return None
    if head == "forecast":
        fitted = robust_normal_threshold(normal, target_fpr)
        if fitted is not None:
            return AlertThreshold(
                max(fitted, ABOVE_NEUTRAL), TARGET_FPR, int(normal.size), target_fpr, ROBUST_NORMAL
            )
    allowed = int(np.floor(target_fpr * normal.size))  # how many normal events may alert
    value = float(np.nextafter(normal[allowed], np.inf)) if allowed < normal.size else float(normal[-1])
    if head == "forecast":
        value = max(value, ABOVE_NEUTRAL)
    return AlertThreshold(value, TARGET_FPR, int(normal.size), target_fpr)


def robust_normal_threshold(scores: np.ndarray, target_fpr: float) -> float | None:
    """The score whose anomaly ``z`` is the ``1 - target_fpr`` quantile of a normal with the median and
    ``1.4826 * MAD`` of the scores' ``z`` (None when they do not vary: no spread to fit)."""
    z = likelihood_z(scores)
    z = z[np.isfinite(z)]
    if z.size == 0:
        return None
    median = float(np.median(z))
    sd = _MAD_TO_SD * float(np.median(np.abs(z - median)))
    if not math.isfinite(sd) or sd <= 0.0:
        return None
    return likelihood_score_of(median + NormalDist().inv_cdf(1.0 - target_fpr) * sd)
