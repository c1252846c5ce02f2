"""StreamScorer: micro-batches with repeated keys, time deltas, and agreement with offline ``forward``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rnnstream.rnn_core.chunk_plan import plan_chunks
from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer
from tests.rnn_core.test_contract import offline


def make_model(cell: str = "gru", use_time_delta: bool = True, seed: int = 0) -> StreamingModel:
    torch.manual_seed(seed)
    spec = FeatureSpec(numeric=("a", "b"), use_time_delta=use_time_delta)
    return StreamingModel(ModelConfig(features=spec, cell=cell, head="binary", hidden_size=8, num_layers=2))


def event_stream(n: int, num_keys: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = [f"k{i}" for i in rng.integers(0, num_keys, n)]
    times = np.cumsum(rng.integers(0, 5_000, n)).astype(np.int64)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return keys, times, x


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_streamed_batches_with_repeated_keys_equal_offline(cell: str) -> None:
    model = make_model(cell)
    keys, times, x = event_stream(300, num_keys=6)  # ~50 events a key: every batch repeats keys
    scorer = StreamScorer(model)
    streamed = np.concatenate(
        [scorer.score(keys[i : i + 64], times[i : i + 64], x[i : i + 64]) for i in range(0, 300, 64)]
    )
    np.testing.assert_allclose(streamed, offline(model, keys, times, x), atol=1e-5)


@pytest.mark.parametrize("step_rows", [1024, 7, 1])
def test_one_batch_equals_one_event_at_a_time(step_rows: int) -> None:
    """Also when the batch is stepped in chunks, so a repeated key's rows land in different chunks."""
    model = make_model()
    keys, times, x = event_stream(200, num_keys=9, seed=1)
    batched = StreamScorer(model, step_rows=step_rows).score(keys, times, x)
    single = StreamScorer(model)
    one_by_one = np.concatenate(
        [single.score(keys[i : i + 1], times[i : i + 1], x[i : i + 1]) for i in range(200)]
    )
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)


@pytest.mark.parametrize("step_rows", [16, 64])
def test_keys_at_most_twice_in_a_chunked_batch_equal_one_at_a_time(step_rows: int) -> None:
    """The common case of a big batch (a few keys twice, none three times) runs without extra waves."""
    model = make_model()
    rng = np.random.default_rng(4)
    keys = [f"k{i}" for i in rng.permutation(100)]
    keys += [keys[i] for i in (3, 0, 97, 50)]  # repeats, including one whose first event is in the last chunk
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    assert max(keys.count(k) for k in keys) == 2
    times = np.cumsum(rng.integers(0, 5_000, len(keys))).astype(np.int64)
    x = rng.normal(size=(len(keys), 3)).astype(np.float32)
    scorer = StreamScorer(model, step_rows=step_rows)
    plan = plan_chunks(scorer.store.lookup(keys), step_rows)
    assert plan.bounds.size - 1 == -(-len(keys) // step_rows)  # no step more than without repeats
    batched = scorer.score(keys, times, x.astype(np.float64))
    single = StreamScorer(model)
    one_by_one = np.concatenate(
        [single.score(keys[i : i + 1], times[i : i + 1], x[i : i + 1]) for i in range(len(keys))]
    )
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    distinct = sorted(set(keys))
    np.testing.assert_array_equal(scorer.store.last_times(distinct), single.store.last_times(distinct))
    torch.testing.assert_close(
        scorer.store.gather(distinct), single.store.gather(distinct), atol=1e-6, rtol=0
    )


def test_one_key_many_times_in_one_batch() -> None:
    model = make_model()
    times = np.array([0, 1_000, 3_000, 3_000, 10_000], np.int64)
    x = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    keys = ["only"] * 5
    np.testing.assert_allclose(
        StreamScorer(model).score(keys, times, x), offline(model, keys, times, x), atol=1e-5
    )


def test_time_delta_filled_from_the_store_and_input_untouched() -> None:
    model = make_model()
    scorer = StreamScorer(model)
    x = np.ones((2, 3), np.float32) * 7
    scorer.score(["a", "b"], np.array([1_000, 2_000]), x)
    assert (x == 7).all()  # the caller's array is not written
    assert scorer.store.last_times(["a", "b"]).tolist() == [1_000, 2_000]
    # a late event (time before the key's last) gets dt 0, not a negative gap
    late = scorer.score(["a"], np.array([500]), np.zeros((1, 3), np.float32))
    fresh = StreamScorer(model)
    fresh.score(["a"], np.array([1_000]), x[:1])
    on_time = fresh.score(["a"], np.array([1_000]), np.zeros((1, 3), np.float32))
    np.testing.assert_allclose(late, on_time, atol=1e-6)


def test_times_as_arrow_timestamps_or_datetime64() -> None:
    model = make_model()
    keys, times, x = event_stream(40, num_keys=3, seed=3)
    expected = StreamScorer(model).score(keys, times, x)
    arrow_times = pa.array(times, type=pa.int64()).cast(pa.timestamp("ms"))
    np.testing.assert_array_equal(StreamScorer(model).score(pa.array(keys), arrow_times, x), expected)
    np.testing.assert_array_equal(
        StreamScorer(model).score(keys, times.astype("datetime64[ms]"), x), expected
    )


def test_removed_keys_start_over() -> None:
    model = make_model(use_time_delta=False)
    scorer = StreamScorer(model)
    x = np.random.default_rng(4).normal(size=(1, 2)).astype(np.float32)
    first = scorer.score(["a"], np.array([0]), x)
    second = scorer.score(["a"], np.array([1]), x)
    assert not np.allclose(first, second)  # the state moved on
    assert scorer.remove_keys(["a"]) == 1
    np.testing.assert_array_equal(scorer.score(["a"], np.array([2]), x), first)


def test_refuses_mismatched_inputs() -> None:
    model = make_model()
    scorer = StreamScorer(model)
    with pytest.raises(ValueError, match="model input width"):
        scorer.score(["a"], np.array([0]), np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="differ in length"):
        scorer.score(["a", "b"], np.array([0]), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        StreamScorer(model, KeyedStateStore((1, 1, 8)))
    with pytest.raises(ValueError, match="step_rows"):
        StreamScorer(model, step_rows=0)
    assert scorer.score([], np.zeros(0, np.int64), np.zeros((0, 3), np.float32)).shape == (0, 1)
    assert scorer.output_names == ["score"]


@pytest.mark.parametrize("head", ["binary", "forecast"])
def test_long_runs_of_one_key_go_through_forward_and_equal_one_at_a_time(head: str) -> None:
    """A batch where a key has many events (one long series) runs that key through forward() at once; the
    results, and every state left in the store, are those of stepping one event at a time."""
    torch.manual_seed(3)
    spec = FeatureSpec(numeric=("a", "b"), use_time_delta=True)
    model = StreamingModel(ModelConfig(features=spec, cell="gru", head=head, hidden_size=8)).eval()
    rng = np.random.default_rng(5)
    n = 900
    keys = ["long" if r < 0.7 else f"k{r % 7}" for r in rng.random(n)]
    keys = [k if k == "long" else f"s{rng.integers(0, 7)}" for k in keys]
    times = np.cumsum(rng.integers(0, 3_000, n)).astype(np.int64)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    batched_scorer = StreamScorer(model)
    batched = np.concatenate([batched_scorer.score(keys[i : i + 300], times[i : i + 300], x[i : i + 300])
                              for i in range(0, n, 300)])  # fmt: skip
    single = StreamScorer(model)
    one_by_one = np.concatenate(
        [single.score(keys[i : i + 1], times[i : i + 1], x[i : i + 1]) for i in range(n)]
    )
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    names = sorted(set(keys))
    torch.testing.assert_close(
        batched_scorer.store.gather(names), single.store.gather(names), atol=1e-5, rtol=0
    )
    assert batched_scorer.store.last_times(names).tolist() == single.store.last_times(names).tolist()
