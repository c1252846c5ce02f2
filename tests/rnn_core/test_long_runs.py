"""StreamScorer on batches where keys repeat many times: which keys run whole through ``forward`` (the rest
steps in waves), and that either way the scores and final states equal offline ``forward`` per key."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.rnn_core.stream_scorer import (
    SEQUENCE_MIN_EVENTS,
    WIDE_WAVE_ROWS,
    StreamScorer,
    _long_run_slots,
)
from tests.rnn_core.test_contract import offline
from tests.rnn_core.test_stream_scorer import make_model


def test_a_replayed_backlog_of_many_keys_steps_in_wide_waves() -> None:
    """2,500 keys with 40 events each: every wave is 2,500 rows wide, so no key runs alone."""
    rng = np.random.default_rng(0)
    slots = rng.permutation(np.repeat(np.arange(2_500), 40))
    assert _long_run_slots(slots).size == 0


def test_one_hot_key_among_many_runs_whole() -> None:
    rng = np.random.default_rng(1)
    slots = rng.permutation(np.r_[np.arange(1, 4_001), np.zeros(500, np.int64)])
    assert _long_run_slots(slots).tolist() == [0]


def test_a_few_long_series_run_whole_and_short_ones_step() -> None:
    slots = np.r_[np.repeat([7, 8, 9], 100), np.repeat([1, 2], SEQUENCE_MIN_EVENTS - 1)]
    assert sorted(_long_run_slots(slots).tolist()) == [7, 8, 9]


def test_at_most_the_keys_beyond_the_wide_waves_run_whole() -> None:
    rng = np.random.default_rng(2)
    counts = np.r_[rng.integers(1, 20, 940), rng.integers(100, 400, 60)]  # a heavy tail of 60 keys
    slots = np.repeat(np.arange(1_000), counts)
    runs = _long_run_slots(slots)
    assert 0 < runs.size < WIDE_WAVE_ROWS
    depth = np.sort(counts)[::-1][WIDE_WAVE_ROWS - 1]
    assert np.all(counts[runs] >= depth + SEQUENCE_MIN_EVENTS)


@pytest.mark.parametrize(
    "counts",
    [
        [300] + [1] * 200,  # one hot key among many
        [120, 90, 60] + [2] * 100,  # a few long series and short ones
        [12] * 150,  # many keys, wide waves only
    ],
)
def test_batches_with_long_runs_equal_offline(counts: list[int]) -> None:
    model = make_model()
    rng = np.random.default_rng(sum(counts))
    keys = [f"k{i}" for i in rng.permutation(np.repeat(np.arange(len(counts)), counts))]
    n = len(keys)
    times = np.cumsum(rng.integers(0, 5_000, n)).astype(np.int64)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    scorer = StreamScorer(model, step_rows=64)
    half = n // 2  # two batches: the second starts every key from the state the first left
    out = np.concatenate(
        [scorer.score(keys[:half], times[:half], x[:half]), scorer.score(keys[half:], times[half:], x[half:])]
    )
    np.testing.assert_allclose(out, offline(model, keys, times, x), atol=1e-5)
