"""Metrics: hand-computed small cases, and agreement with sklearn on random inputs (sklearn only here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from rnnstream.rnn_core.metrics import (
    accuracy,
    anomaly_segments,
    best_f1,
    best_f1_point_adjusted,
    detection_delay,
    macro_f1,
    pr_auc,
    precision_at_k,
    recall_at_fpr,
    roc_auc,
)

Y = np.array([0, 0, 1, 1, 0, 1])
S = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])


def test_pr_auc_by_hand() -> None:
    # descending: 0.9(+) 0.8(+) 0.4(-) 0.35(+) 0.2(-) 0.1(-): precisions at each recall step 1, 1, 3/4
    assert pr_auc(Y, S) == pytest.approx((1 + 1 + 0.75) / 3)


def test_roc_auc_by_hand_and_ties() -> None:
    # pairs (pos, neg) ordered right: 0.9 beats 3, 0.8 beats 3, 0.35 beats 2 of 3 -> 8/9
    assert roc_auc(Y, S) == pytest.approx(8 / 9)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_recall_at_fpr_by_hand() -> None:
    assert recall_at_fpr(Y, S, max_fpr=0.0) == pytest.approx(2 / 3)
    assert recall_at_fpr(Y, S, max_fpr=1 / 3) == pytest.approx(1.0)
    assert math.isnan(recall_at_fpr([0, 0], [0.1, 0.2]))


def test_best_f1_by_hand() -> None:
    f1, threshold, precision, recall = best_f1(Y, S)
    # threshold 0.8: tp 2, fp 0 -> F1 0.8; threshold 0.35: tp 3, fp 1 -> F1 6/7 (best)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.35)
    assert (precision, recall) == (pytest.approx(0.75), pytest.approx(1.0))
    assert best_f1([0, 0], [0.3, 0.1]).f1 == 0.0


def test_point_adjusted_f1_counts_whole_segments() -> None:
    y = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0])
    s = np.array([0.1, 0.2, 0.9, 0.1, 0.3, 0.1, 0.2, 0.25, 0.1])
    result = best_f1_point_adjusted(y, s)
    # threshold 0.9: segment one (3 points) detected, fp 0, fn 2 -> F1 = 6 / (6 + 0 + 2) = 0.75
    # threshold 0.25: both segments (5 points), fp 1 (0.3) -> F1 = 10 / 11 (best)
    assert result.f1 == pytest.approx(10 / 11)
    assert result.threshold == pytest.approx(0.25)
    assert result.recall == pytest.approx(1.0)
    assert result.precision == pytest.approx(5 / 6)
    # without adjustment the same scores do worse
    assert best_f1(y, s).f1 < result.f1


def test_segments_split_at_series_boundaries() -> None:
    y = np.array([1, 1, 1, 1, 0, 1])
    series = np.array([0, 0, 1, 1, 1, 1])
    starts, ends = anomaly_segments(y, series)
    assert starts.tolist() == [0, 2, 5]
    assert ends.tolist() == [2, 4, 6]


def test_detection_delay_per_segment() -> None:
    y = np.array([0, 1, 1, 1, 0, 1, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.1, 0.7, 0.9, 0.1, 0.1, 0.1, 0.8])
    delays = detection_delay(y, s, threshold=0.5)
    assert delays[0] == 2  # flagged on its third point (the flag before it is outside the segment)
    assert math.isnan(delays[1])  # never flagged inside (the later flag belongs to the next segment)
    assert delays[2] == 0


def test_accuracy_macro_f1_precision_at_k_by_hand() -> None:
    y = np.array([0, 1, 2, 2, 1])
    p = np.array([0, 2, 2, 2, 1])
    assert accuracy(y, p) == pytest.approx(0.8)
    # class 0: 1; class 1: tp 1, |y|=2, |p|=1 -> 2/3; class 2: tp 2, |y|=2, |p|=3 -> 4/5
    assert macro_f1(y, p) == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    assert precision_at_k(Y, S, 2) == 1.0
    assert precision_at_k(Y, S, 3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    y = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.random(n) + 0.5 * y, 2)  # rounding makes ties
    assert pr_auc(y, scores) == pytest.approx(skm.average_precision_score(y, scores))
    assert roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores))
    precision, recall, _ = skm.precision_recall_curve(y, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    assert best_f1(y, scores).f1 == pytest.approx(f1.max())
    fpr, tpr, _ = skm.roc_curve(y, scores, drop_intermediate=False)
    assert recall_at_fpr(y, scores, 0.05) == pytest.approx(tpr[fpr <= 0.05].max())
    classes = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < 0.6, classes, rng.integers(0, 4, n))
    assert accuracy(classes, predicted) == pytest.approx(skm.accuracy_score(classes, predicted))
    assert macro_f1(classes, predicted) == pytest.approx(skm.f1_score(classes, predicted, average="macro"))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        pr_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 and 1"):
        best_f1([0, 2], [0.1, 0.2])
