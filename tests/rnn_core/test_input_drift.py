"""Per-key statistics of forecast heads: inputs that follow a key; anomaly episodes not learned at once."""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.rnn_core.anomaly_likelihood import NUM_STATS, LikelihoodWindows, likelihood_sequence
from rnnstream.rnn_core.input_drift import DriftWindow, drift_stats_size, normalize_sequence

MEAN, VAR = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 4.0])


def _series(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, n, 2)) * [1.0, 2.0] + [0.0, 10.0]
    x[0, n // 2 :, 0] += 8.0  # key 0: a level shift in its first column
    return torch.tensor(x, dtype=torch.float32)


def test_one_event_at_a_time_equals_the_whole_sequence_bit_for_bit() -> None:
    x = _series(300)
    stats0 = torch.zeros(2, drift_stats_size(2))
    whole = normalize_sequence(x, stats0, MEAN, VAR, DriftWindow())
    stats, parts = stats0, []
    for t in range(x.shape[1]):
        out = normalize_sequence(x[:, t : t + 1], stats, MEAN, VAR, DriftWindow())
        parts.append(out[:3])
        stats = out[3]
    for i in range(3):
        assert torch.equal(torch.cat([p[i] for p in parts], dim=1), whole[i])
    assert torch.equal(stats, whole[3])


def test_the_level_follows_a_shift_and_the_scale_never_falls_below_the_training_scale() -> None:
    n = 2000
    x = _series(n)
    normalized, level, scale, _ = normalize_sequence(
        x, torch.zeros(2, drift_stats_size(2)), MEAN, VAR, DriftWindow(window=200)
    )
    # a new key starts from the training mean and scale
    assert abs(float(normalized[1, 0, 1] - (x[1, 0, 1] - 10.0) / 2.0)) < 1e-6
    # key 0 after its shift: first far off (what alarms), then back in its normal range
    assert float(normalized[0, n // 2, 0]) > 4.0
    assert abs(float(level[0, -1, 0]) - 8.0) < 0.5 and float(normalized[0, -500:, 0].abs().mean()) < 1.2
    assert bool((scale[..., 0] >= 1.0 - 1e-6).all()) and bool((scale[..., 1] >= 2.0 - 1e-6).all())
    # key 1 (no change) stays normalized as by the training statistics
    assert abs(float(normalized[1, :, 1].std()) - 1.0) < 0.15


def test_an_anomaly_episode_is_not_learned_as_normal_until_it_lasts() -> None:
    windows = LikelihoodWindows(short_window=10, long_window=200, max_frozen=100)
    rng = np.random.default_rng(1)
    e = np.abs(rng.normal(size=(1, 1500))).astype(np.float32)
    e[0, 500:] *= 3.0  # the errors triple for good at 500
    _, z, final = likelihood_sequence(torch.from_numpy(e), torch.zeros(1, NUM_STATS), (0.8, 0.36), windows)
    z = z[0].numpy()
    assert z[510:600].min() > 1.0  # the episode keeps its score: the history did not learn it
    frozen = LikelihoodWindows(short_window=10, long_window=200, max_frozen=10**6)
    _, z_frozen, _ = likelihood_sequence(torch.from_numpy(e), torch.zeros(1, NUM_STATS), (0.8, 0.36), frozen)
    assert np.median(z[1200:]) < 0.5 < np.median(z_frozen[0, 1200:].numpy())  # after max_frozen: learned
    assert float(final[0, 0]) == 1500.0


def test_an_anomalous_stretch_is_not_followed_until_it_lasts_max_frozen_events() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 1500, 1)).astype(np.float32)
    x[0, 300:400, 0] += 20.0  # an anomalous stretch of 100 events, 20 sigmas off
    x[0, 700:, 0] += 20.0  # a lasting level shift
    window = DriftWindow(window=200, max_frozen=150)
    stats = torch.zeros(1, drift_stats_size(1))
    normalized, level, scale, _ = normalize_sequence(torch.from_numpy(x), stats, MEAN[:1], VAR[:1], window)
    # the stretch is measured against the level before it all along, and leaves level and scale unmoved
    assert float(normalized[0, 300:400, 0].min()) > 15.0
    assert abs(float(level[0, 450, 0])) < 0.5 and float(scale[0, 450, 0]) < 1.5
    # the shift lasts past max_frozen: followed, and normal again for this key
    assert float(normalized[0, 700:850, 0].min()) > 15.0
    assert abs(float(level[0, -1, 0]) - 20.0) < 1.0 and float(normalized[0, -300:, 0].abs().mean()) < 1.2
