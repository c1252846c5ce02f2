"""Key expiry (TTL) inside StreamScorer: on event time, deterministic, the same however events are batched
and whenever expired keys are swept, and carried through snapshots by the store's watermark."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer
from tests.rnn_core.failing_model import POISON, FailingStep
from tests.rnn_core.test_stream_scorer import make_model

TTL = 10_000


def bursty_stream(n: int, num_keys: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys that go quiet for longer than the TTL now and then, with slightly out-of-order times."""
    rng = np.random.default_rng(seed)
    keys = [f"k{i}" for i in rng.integers(0, num_keys, n)]
    steps = np.where(rng.random(n) < 0.02, 3 * TTL, rng.integers(0, 800, n))
    times = np.cumsum(steps).astype(np.int64) - rng.integers(0, 300, n)  # jitter: out of order a little
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return keys, times, x


def reference(keys: list[str], times: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One event at a time, the rule written out: (outputs, expired mask)."""
    model = make_model(seed=1)
    scorer = StreamScorer(model)
    last: dict[str, int] = {}
    watermark = -1
    outs, expired = [], []
    for i, k in enumerate(keys):
        watermark = max(watermark, int(times[i]))
        gone = k in last and watermark - last[k] > TTL
        if gone:
            scorer.remove_keys([k])
        expired.append(gone)
        last[k] = int(times[i])
        outs.append(scorer.score([k], times[i : i + 1], x[i : i + 1]))
    return np.concatenate(outs), np.asarray(expired)


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
def test_expiry_is_the_rule_whatever_the_batching(batch: int) -> None:
    keys, times, x = bursty_stream(500, num_keys=12, seed=2)
    expected, expired = reference(keys, times, x)
    assert 5 < expired.sum() < 200  # the stream really exercises expiry
    scorer = StreamScorer(make_model(seed=1), key_ttl_ms=TTL)
    outs, flags = [], []
    for i in range(0, len(keys), batch):
        outs.append(scorer.score(keys[i : i + batch], times[i : i + batch], x[i : i + batch]))
        flags.append(scorer.last_expired)
    np.testing.assert_allclose(np.concatenate(outs), expected, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(flags), expired)


def test_sweeping_expired_keys_changes_no_score() -> None:
    keys, times, x = bursty_stream(600, num_keys=20, seed=3)
    plain = StreamScorer(make_model(seed=1), key_ttl_ms=TTL)
    swept = StreamScorer(make_model(seed=1), key_ttl_ms=TTL)
    rng = np.random.default_rng(0)
    freed = 0
    for i in range(0, len(keys), 50):
        sl = slice(i, i + 50)
        np.testing.assert_allclose(
            swept.score(keys[sl], times[sl], x[sl]), plain.score(keys[sl], times[sl], x[sl]), atol=1e-6
        )
        if rng.random() < 0.5:
            freed += swept.evict_expired()
    assert freed > 0
    assert swept.store.num_keys < plain.store.num_keys


def test_watermark_survives_a_snapshot(tmp_path) -> None:
    keys, times, x = bursty_stream(400, num_keys=10, seed=4)
    whole = StreamScorer(make_model(seed=1), key_ttl_ms=TTL).score(keys, times, x)
    first = StreamScorer(make_model(seed=1), key_ttl_ms=TTL)
    head = first.score(keys[:200], times[:200], x[:200])
    first.store.snapshot(None, str(tmp_path / "snap.arrow"))
    store = KeyedStateStore(first.store.state_shape)
    store.restore(str(tmp_path / "snap.arrow"))
    assert store.watermark_ms == first.store.watermark_ms == int(times[:200].max())
    resumed = StreamScorer(make_model(seed=1), store, key_ttl_ms=TTL)
    np.testing.assert_allclose(
        np.concatenate([head, resumed.score(keys[200:], times[200:], x[200:])]), whole, atol=1e-6
    )


def test_no_ttl_never_expires_and_bad_ttl_is_refused() -> None:
    keys, times, x = bursty_stream(100, num_keys=3, seed=5)
    scorer = StreamScorer(make_model(seed=1))
    scorer.score(keys, times, x)
    assert not scorer.last_expired.any() and scorer.evict_expired() == 0
    assert scorer.store.watermark_ms == int(times.max())
    with pytest.raises(ValueError, match="key_ttl_ms"):
        StreamScorer(make_model(), key_ttl_ms=0)


@pytest.mark.parametrize("ttl", [None, TTL])
def test_a_failed_call_leaves_every_state_as_it_was(ttl: int | None) -> None:
    keys, times, x = bursty_stream(600, num_keys=15, seed=6)
    scorer = StreamScorer(FailingStep(make_model(seed=1)), step_rows=32, key_ttl_ms=ttl)
    scorer.score(keys[:300], times[:300], x[:300])
    before = {k: (scorer.store.gather([k]).numpy().copy(), scorer.store.last_times([k])[0]) for k in keys}
    watermark = scorer.store.watermark_ms
    bad = x[300:].copy()
    bad[250, 0] = POISON  # fails in a late chunk, after earlier chunks were stored
    with pytest.raises(RuntimeError, match="poison"):
        scorer.score(keys[300:], times[300:], bad)
    for k, (state, last) in before.items():
        np.testing.assert_array_equal(scorer.store.gather([k]).numpy(), state)
        assert scorer.store.last_times([k])[0] == last
    assert scorer.store.watermark_ms == watermark
    # and the batch without the poison row scores as if the failure never happened
    clean = StreamScorer(make_model(seed=1), step_rows=32, key_ttl_ms=ttl)
    clean.score(keys[:300], times[:300], x[:300])
    np.testing.assert_allclose(
        scorer.score(keys[300:], times[300:], x[300:]),
        clean.score(keys[300:], times[300:], x[300:]),
        atol=1e-6,
    )
