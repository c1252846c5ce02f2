"""The forecast head's adaptive score: a key warming up is neutral and learns nothing, errors as usual score
about 0.5, stepping equals the sequence through the warm-up, and the compiled recursion is its Python form
bit for bit."""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.rnn_core.anomaly_likelihood import (
    NUM_STATS,
    LikelihoodWindows,
    _recursion_params,
    likelihood_sequence,
    likelihood_step,
)
from rnnstream.rnn_core.likelihood_recursion import likelihood_recursion

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
    count, _, long, var, frozen, _ = final[0].tolist()
    assert count == WINDOWS.warmup_events and frozen == 0.0
    assert abs(long - PRIOR[0]) < 1e-6 and abs(var - PRIOR[1]) < 1e-6  # the history is still the prior
    # the first event after warm-up is scored, and a usual one is not alarming
    score, z, _ = _run(np.concatenate([e, [PRIOR[0]]]))
    assert z[-1] != 0.0 and score[-1] < 0.9


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


def test_a_cold_start_does_not_alarm_after_the_warm_up_either() -> None:
    e = np.concatenate([np.full(WINDOWS.warmup_events, 9.0), _usual(50, seed=5)])
    score, z, _ = _run(e)
    assert float(z.max()) < 2.5  # the cold errors are in neither the short mean nor the history
    assert float(score[: WINDOWS.warmup_events + 10].max()) < 0.99


def _lasting_change(seed: int = 5) -> np.ndarray:
    """Usual errors, then from event 800 on errors twice as large for good (a change of variance the model
    cannot follow: an episode past ``max_frozen``, then learned), and at 2400-2500 an anomaly on top."""
    e = np.abs(np.random.default_rng(seed).normal(PRIOR[0], PRIOR[1] ** 0.5, 3000))
    e[800:] *= 2.0
    e[2400:2500] *= 3.0
    return e


def test_the_compiled_recursion_equals_its_python_form_bit_for_bit() -> None:
    e = np.concatenate([np.full(WINDOWS.warmup_events, 9.0), _lasting_change()])[None].astype(np.float32)
    params = _recursion_params(PRIOR, WINDOWS)
    outs = []
    for run in (likelihood_recursion, likelihood_recursion.py_func):
        stats = np.zeros((1, NUM_STATS), np.float32)
        stats[:, 1:4] = (PRIOR[0], PRIOR[0], PRIOR[1])
        zs, scored = np.empty(e.shape, np.float32), np.empty(e.shape, np.bool_)
        run(e, stats, zs, scored, params)
        outs.append((zs, scored, stats))
    for compiled_out, python_out in zip(*outs, strict=True):
        assert np.array_equal(compiled_out, python_out)
    zs, scored, _ = outs[0]
    assert bool(scored[0, -1]) and float(zs[0, 820:900].min()) > 0.5  # warm, and the change alarmed
