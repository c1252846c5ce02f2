"""The session alert line from the model's expected share of alerting sessions (files/expected_alerts.py):
the anomalies an unlabelled held-out part holds fill its observed top 1%, not the expected share."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.files.alert_threshold import choose_threshold
from rnnstream.files.expected_alerts import (
    binomial_upper,
    expected_alert_probability,
    expected_alert_share,
    expected_line,
    sample_within,
)
from rnnstream.files.holdout import SCORE_TOLERANCE, between_scores

# one event's next-token distribution: A usual, B a normal choice, C never seen in normal sessions
EVENT = np.array([0.9, 0.0995, 0.0005], np.float32)


def sessions(normal: int, anomalous: int, events: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
    """Distributions ``[events, 3]`` a session and each session's highest score (1 - P(token that came)):
    normal sessions take B once (score 0.9005), anomalous ones C once (0.9995)."""
    dists = [np.tile(EVENT, (events, 1)) for _ in range(normal + anomalous)]
    scores = np.r_[np.full(normal, 1.0 - EVENT[1]), np.full(anomalous, 1.0 - EVENT[2])]
    return dists, scores.astype(np.float32)


def test_expected_share_is_the_chance_that_some_event_alerts():
    first = np.array([[0.7, 0.2, 0.1], [0.5, 0.45, 0.05]], np.float32)
    second = np.array([[0.98, 0.01, 0.01]], np.float32)
    # at p = 0.1: the first session alerts unless neither event does (0.9 * 0.95), the second with 0.02
    want = ((1.0 - 0.9 * 0.95) + 0.02) / 2.0
    assert expected_alert_share([first, second], 0.1) == pytest.approx(want, rel=1e-6)
    assert expected_alert_share([first, second], 0.001) == 0.0
    assert expected_alert_share([first, second], 1.0) == pytest.approx(1.0)


def test_expected_probability_is_the_loosest_within_the_target():
    dists, _ = sessions(100, 0)
    p = expected_alert_probability(dists, 0.01)
    # tokens of probability 0.0005 (5 chances a session: 0.25%) fit in 1%, the normal choice B does not
    assert EVENT[2] <= p < EVENT[1]
    assert expected_alert_share(dists, p) <= 0.01 < expected_alert_share(dists, float(EVENT[1]))


def test_anomalies_in_the_held_out_part_set_the_observed_line_not_the_expected_one():
    dists, scores = sessions(97, 3)  # 3% anomalies, as an unlabelled log holds
    observed = choose_threshold("next_token", scores, None, 0.01)
    assert not (
        scores.astype(np.float64) >= observed.value
    ).any()  # the observed top 1% is anomalies: it flags none of them
    line = expected_line(dists, scores, 0.01)
    assert line is not None and np.array_equal(
        scores.astype(np.float64) >= line, np.arange(100) >= 97
    )  # flags C, never B
    clean_dists, clean_scores = sessions(100, 0)
    assert line == expected_line(clean_dists, clean_scores, 0.01)  # as without them


def test_a_line_the_held_out_sessions_cross_too_often_is_refused():
    """A model sharper than the data: it expects C in 0.25% of sessions, 8% of them have it."""
    dists, scores = sessions(92, 8)
    assert binomial_upper(100, 0.01) < 8
    assert expected_line(dists, scores, 0.01) is None


def test_binomial_upper_quantiles():
    assert binomial_upper(600, 0.01) == 10 and binomial_upper(120, 0.01) == 3  # scipy.stats.binom.ppf(0.95)
    assert binomial_upper(200_000, 0.01) in (2073, 2074)  # normal approximation (the first term underflows)


def test_sample_within_keeps_every_key_that_fits_and_a_seeded_share_of_the_rest():
    lengths = np.full(1000, 20)
    assert sample_within(lengths, 16).size == 1000
    big = sample_within(lengths, 2_000_000)
    assert big.size == 0 or (lengths[big].sum() * 2_000_000 <= 20_000_000)
    kept = sample_within(np.full(100_000, 20), 50)
    assert kept.size == 20_000 and np.array_equal(kept, sample_within(np.full(100_000, 20), 50))


def test_the_session_line_sits_halfway_between_scores_not_a_float_step_above_a_tie():
    """Sessions whose worst event is the same one share a highest score; a line one float step above such a
    tie flips with the scorer's last-bit differences (tests/files/test_session_end.py flagged 4.5%)."""
    scores = np.array([0.5, 0.9014761, 0.9014761, 0.9014761, 0.95], np.float32)
    chosen = choose_threshold("next_token", scores, None, 0.2)  # one of five may alert: 0.95
    moved = between_scores(chosen.value, scores)
    wide = scores.astype(np.float64)
    assert moved == pytest.approx(wide[1] + SCORE_TOLERANCE, rel=1e-9)
    assert np.array_equal(wide >= moved, wide >= chosen.value)  # the same held-out sessions alert
    assert not (wide[1:4] + 1e-6 >= moved).any()  # ... and the tie is not within float noise of the line
    close = np.array([0.5, 0.9, 0.900002], np.float32)  # a gap under twice the tolerance: halfway
    assert between_scores(float(np.nextafter(close[1], 1.0)), close) == pytest.approx(0.900001, abs=1e-7)
    assert between_scores(0.1, scores) == 0.1  # below every score: unchanged
