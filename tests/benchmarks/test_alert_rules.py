"""benchmarks/alert_rules.py: the alert rules it compares, on generated scores (no real data)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import alert_rules as rules


def test_hysteresis_opens_at_the_open_line_and_clears_below_the_clear_line() -> None:
    score = np.array([0.1, 0.55, 0.7, 0.55, 0.52, 0.45, 0.55, 0.7, 0.6])
    alert = rules.hysteresis(score, open_at=0.6, clear_at=0.5)
    # 0.55 before any crossing does not open; after 0.7 it stays open down to 0.52; 0.45 clears it
    assert alert.tolist() == [False, False, True, True, True, False, False, True, True]
    assert np.array_equal(rules.hysteresis(score, 0.6, 0.6), score >= 0.6)  # clear == open: no state


def test_hold_keeps_each_crossing_open_for_n_events() -> None:
    score = np.zeros(10)
    score[[2, 8]] = 1.0
    assert np.flatnonzero(rules.hold(score, 0.5, 3)).tolist() == [2, 3, 4, 5, 8, 9]


def test_after_end_profile_reads_the_events_after_each_segment() -> None:
    label = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0])
    alert = np.array([0, 1, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    # segments end at 3 and 7 (first normal events): offset 0 -> alerts at 3 and 7, offset 1 -> 4 and 8
    assert rules.after_end_profile(label, alert, (0, 1)) == [[True, False], [False, True]]


def test_evaluate_chooses_lines_on_the_held_out_tails_and_scores_every_rule() -> None:
    rng = np.random.default_rng(0)
    entities, train_entity, train_score, entity, label, score = ["a", "b"], [], [], [], [], []
    for e in entities:
        train_entity += [e] * 2_000
        train_score.append(0.5 + 0.02 * rng.standard_normal(2_000))
        y = np.zeros(2_000, dtype=np.int64)
        y[500:600] = 1  # a contiguous anomaly whose scores sit partly under the open line
        s = 0.5 + 0.02 * rng.standard_normal(2_000) + np.where(y == 1, 0.045, 0.0)
        entity += [e] * 2_000
        label.append(y)
        score.append(s)
    run = {
        "train_entity": np.asarray(train_entity),
        "train_score": np.concatenate(train_score),
        "entity": np.asarray(entity),
        "label": np.concatenate(label),
        "score": np.concatenate(score),
    }
    pooled = np.concatenate([rules.held_out_tail(s, 0.2) for s in train_score])
    run["threshold"] = rules.robust_line(pooled, 0.01)
    found = rules.evaluate(run, target_fpr=0.01, holdout=0.2)
    assert found["recomputed_threshold"] == run["threshold"]
    assert found["rules"]["stored"]["f1"] == round(
        np.mean([rules.f1_of(y, s >= run["threshold"]) for y, s in zip(label, score, strict=True)]), 4
    )
    # contiguous anomalies partly under the line: hysteresis adds mostly anomalous events here
    assert found["rules"]["hysteresis_5"]["f1"] > found["rules"]["stored"]["f1"]
    assert found["rules"]["hysteresis_5"]["added_precision"] > found["anomaly_rate"]
