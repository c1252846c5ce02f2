"""benchmarks/nab_scoring.py: NAB's scoring rules on hand-made detections (no data)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import nab_scoring as nab


def one_series() -> nab.Series:
    n = 1_000  # one anomaly at 500: a window of 100 points around it, the first 150 not scored
    return nab.Series(n, nab.label_windows(n, [500]))


def test_windows_are_a_tenth_of_the_series_and_merge_on_overlap() -> None:
    assert nab.label_windows(1_000, [500]) == ((450, 550),)
    assert nab.label_windows(1_000, [500, 520]) == ((475, 545),)  # 50 each, overlapping: one window


def test_null_scores_0_perfect_100_and_false_positives_cost() -> None:
    s = one_series()
    lo = s.windows[0][0]
    none = np.zeros(s.length)
    first = none.copy()
    first[lo] = 1
    assert nab.nab_at_threshold([s], [none]).score == 0.0
    assert nab.nab_at_threshold([s], [first]).score == pytest.approx(100.0)
    late = none.copy()
    late[s.windows[0][1]] = 1
    assert 0.0 < nab.nab_at_threshold([s], [late]).score < 60.0  # found at the window's end: little reward
    noisy = first.copy()
    noisy[[200, 300, 900]] = 1  # far from the window: 0.11 each
    assert nab.nab_at_threshold([s], [noisy]).raw == pytest.approx(nab.scaled_sigmoid(-1.0) - 0.33, abs=0.01)
    probation = none.copy()
    probation[:100] = 1  # the first 15% is not scored
    assert nab.nab_at_threshold([s], [probation]).false_positives == 0
    assert nab.probation_length(1_000) == 150 and nab.probation_length(8_000) == 750  # 15%, at most 750


def test_the_best_shared_threshold_is_found_over_all_series() -> None:
    a, b = one_series(), one_series()
    sa, sb = np.zeros(a.length), np.zeros(b.length)
    sa[a.windows[0][0]] = 0.9  # series a: its anomaly scores 0.9
    sb[b.windows[0][0]] = 0.5  # b: 0.5, under 20 normal points at 0.6 (costlier than it earns)
    sb[700:720] = 0.6
    best = nab.nab_score([a, b], [sa, sb])
    assert best.threshold == 0.9 and best.true_positives == 1 and best.false_positives == 0
    assert best.score == pytest.approx(50.0)
