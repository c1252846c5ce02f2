"""The alert threshold fit-file stores is chosen on held-out data alone, by a rule that could fail."""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.files.alert_threshold import (
    BEST_F1,
    EMPIRICAL,
    ROBUST_NORMAL,
    TARGET_FPR,
    AlertThreshold,
    choose_threshold,
)
from rnnstream.rnn_core.anomaly_likelihood import likelihood_score


def test_target_fpr_flags_at_most_that_share_of_normal_events() -> None:
    rng = np.random.default_rng(0)
    for n, fpr in ((10_000, 0.01), (999, 0.05), (37, 0.01)):
        scores = rng.random(n)
        t = choose_threshold("next_token", scores, target_fpr=fpr)
        assert t is not None and t.rule == TARGET_FPR and t.events == n and t.null == EMPIRICAL
        flagged = int((scores >= t.value).sum())
        assert flagged <= fpr * n and flagged >= fpr * n - 1  # as many as allowed, never more


def test_ties_never_push_the_share_over_the_target() -> None:
    scores = np.r_[np.zeros(900), np.ones(100)]  # 10% tie at the top
    t = choose_threshold("next_token", scores, target_fpr=0.05)
    assert (scores >= t.value).mean() <= 0.05


def test_labels_give_the_best_f1_threshold_and_one_class_falls_back_to_negatives() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.35])
    labels = np.array([0, 0, 0, 1, 1, np.nan])
    t = choose_threshold("binary", scores, labels)
    assert t.rule == BEST_F1 and t.value == 0.8 and t.events == 5
    only_negatives = choose_threshold("binary", scores[:3], np.zeros(3), target_fpr=0.01)
    assert only_negatives.rule == TARGET_FPR and only_negatives.value > 0.3
    assert choose_threshold("multiclass", scores) is None
    assert AlertThreshold.from_dict(t.to_dict()) == t


def test_a_forecast_threshold_fits_the_normal_bulk_and_ignores_anomalies_in_the_held_out_part() -> None:
    rng = np.random.default_rng(0)
    normal_z = rng.normal(0.2, 0.3, size=20_000)  # the anomaly z of normal held-out events
    anomalies = rng.normal(4.0, 1.0, size=1_000)  # 5% anomalous events in the unlabelled held-out part

    def score(z: np.ndarray) -> np.ndarray:
        return likelihood_score(torch.tensor(z, dtype=torch.float32)).numpy()

    t = choose_threshold("forecast", np.r_[score(normal_z), score(anomalies)], target_fpr=0.01)
    assert t is not None and t.rule == TARGET_FPR and t.null == ROBUST_NORMAL and "MAD" in t.describe()
    fresh = score(rng.normal(0.2, 0.3, size=20_000))  # normal events to come
    assert 0.006 <= float((fresh >= t.value).mean()) <= 0.014  # ~1% of normal events, not 1% of the mix
    assert float((score(anomalies) >= t.value).mean()) > 0.95
    empirical = choose_threshold("next_token", np.r_[score(normal_z), score(anomalies)], target_fpr=0.01)
    assert empirical.value > np.quantile(score(anomalies), 0.5)  # the empirical 1% lies among the anomalies
    # the static score (uniform on training errors) maps to a standard normal: ~1% of it flagged
    uniform = rng.random(10_000)
    assert 0.006 <= float((uniform >= choose_threshold("forecast", uniform).value).mean()) <= 0.014
    # no spread to fit: the empirical rule
    assert choose_threshold("forecast", np.full(100, 0.5)).null == EMPIRICAL
    assert AlertThreshold.from_dict(t.to_dict()) == t


def test_a_forecast_threshold_never_lets_a_neutral_score_alert() -> None:
    # held-out anomaly z centred well below 0 (the smaller of two z): the fitted 1% line would be below 0.5
    z = np.random.default_rng(7).normal(-3.0, 0.3, 2000)
    scores = likelihood_score(torch.from_numpy(z).float()).numpy()
    chosen = choose_threshold("forecast", scores)
    assert chosen is not None and chosen.value > 0.5  # a warming key's 0.5 and errors as usual never alert
    assert likelihood_score(torch.tensor([0.01])).item() >= chosen.value  # anything above usual still can
