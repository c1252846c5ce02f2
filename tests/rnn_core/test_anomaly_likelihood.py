"""The forecast head's adaptive score: a key warming up is neutral, an onset scores at its first event, a
sustained small rise scores through the short mean, and errors as usual score about 0.5."""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.rnn_core.anomaly_likelihood import (
    NUM_STATS,
    LikelihoodWindows,
    likelihood_sequence,
    likelihood_step,
    max_of_two_z,
    mean_variance_factor,
)

PRIOR = (0.8, 0.36)  # training errors' mean and variance
WINDOWS = LikelihoodWindows()


def _run(e: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    score, z, final = likelihood_sequence(
        torch.from_numpy(e[None].astype(np.float32)), torch.zeros(1, NUM_STATS), PRIOR, WINDOWS
    )
    return score[0].numpy(), z[0].numpy(), final


def _usual(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(PRIOR[0], PRIOR[1] ** 0.5, n)


def test_a_warming_key_scores_neutral_and_does_not_learn() -> None:
    e = np.full(WINDOWS.warmup_events, 9.0)  # a cold hidden state's large first errors
    score, z, final = _run(e)
    assert np.all(z == 0.0) and np.all(score == 0.5)
    count, _, long, var, frozen = final[0].tolist()
    assert count == WINDOWS.warmup_events and frozen == 0.0
    assert abs(long - PRIOR[0]) < 1e-6 and abs(var - PRIOR[1]) < 1e-6  # the history is still the prior
    # the first event after warm-up is scored, and a usual one is not alarming
    score, z, _ = _run(np.concatenate([e, [PRIOR[0]]]))
    assert z[-1] != 0.0 and score[-1] < 0.9


def test_an_onset_scores_at_its_first_event() -> None:
    e = _usual(400)
    e[300] = PRIOR[0] + 6.0 * PRIOR[1] ** 0.5  # one 6-sigma error
    _, z, _ = _run(e)
    assert z[300] > 4.5  # the event's own z: the ten-event mean alone would be ~0.6 sigma above usual
    assert z[300] > z[250:300].max() + 1.0


def test_a_sustained_small_rise_scores_through_the_short_mean() -> None:
    e = _usual(400, seed=1)
    e[300:330] += 1.5 * PRIOR[1] ** 0.5  # 1.5 sigma for 30 events: no single event stands out
    _, z, _ = _run(e)
    assert np.median(z[315:330]) > 3.0  # the ten-event mean against its own, smaller, null variance
    assert np.median(z[100:300]) < 0.3


def test_errors_as_usual_score_near_one_half_and_rarely_high() -> None:
    score, z, _ = _run(_usual(3000, seed=2))
    z = z[WINDOWS.warmup_events :]
    # the smaller of two z (own history, training errors) sits a little below 0 on usual errors
    assert -0.5 < float(np.median(z)) < 0.1
    assert float(np.mean(z > 2.0)) < 0.03  # about a normal's 2.3% above 2 sigma, not more
    assert 0.3 < float(np.median(score[WINDOWS.warmup_events :])) < 0.55


def test_stepping_equals_the_sequence_through_warm_up() -> None:
    e = torch.from_numpy(_usual(40, seed=3).astype(np.float32))[None]
    _, z_seq, final_seq = likelihood_sequence(e, torch.zeros(1, NUM_STATS), PRIOR, WINDOWS)
    stats, zs = torch.zeros(1, NUM_STATS), []
    for i in range(e.shape[1]):
        _, z, stats = likelihood_step(e[:, i], stats, PRIOR, WINDOWS)
        zs.append(z)
    assert torch.equal(torch.stack(zs, 1), z_seq) and torch.equal(stats, final_seq)


def test_the_short_means_variance_factor_matches_its_recursion() -> None:
    window, f, expected = 10, 0.0, []
    for n in range(1, 200):
        a = max(1.0 / n, 1.0 / window)
        f = (1 - a) ** 2 * f + a * a  # Var(short) / Var(e) of the recursion, independent errors
        expected.append(f)
    got = mean_variance_factor(np.arange(1, 200, dtype=np.float32), window)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_the_max_of_two_z_is_back_on_the_normal_scale() -> None:
    rng = np.random.default_rng(4)
    pairs = torch.from_numpy(rng.standard_normal((200_000, 2)).max(1).astype(np.float32))
    z = max_of_two_z(pairs).numpy()
    assert abs(float(np.median(z))) < 0.02 and abs(float(np.mean(z > 2.0)) - 0.02275) < 0.002
    big = max_of_two_z(torch.tensor([10.0, 29.0, 31.0, 1e6]))
    assert torch.all(torch.isfinite(big)) and torch.all(big[1:] > big[:-1])
