"""The contract every cell x head must keep (in the spirit of river's ``checks``).

For each of rnn/lstm/gru x binary/forecast/multiclass/next_token (and forecast with per-key input
normalization, ``adaptive_inputs``), on a small two-layer model whose inputs
have continuous columns, a token column and the time delta, with irregular gaps between events:

- streaming == offline: events streamed through ``StreamScorer`` give ``forward``'s outputs (abs tol 1e-5);
- seeded determinism: the same seed builds the same model and the same outputs;
- save -> load -> the same outputs;
- snapshot -> restore -> the stream goes on as if never interrupted;
- a batch of distinct keys == the keys one at a time;
- repeated keys in one batch == their events one at a time, in order (also when stepped in chunks).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rnnstream.rnn_core.config import CELLS, HEADS, FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import load_model, save_model
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer

DRIFT = "forecast+inputs"  # a forecast head whose keys normalize their inputs with their own level and scale
COMBOS = list(itertools.product(CELLS, (*HEADS, DRIFT)))
IDS = [f"{cell}-{head}" for cell, head in COMBOS]
SPEC = FeatureSpec(
    numeric=("a", "b"), categorical=("token",), vocabularies=(("x", "y", "z"),), use_time_delta=True
)
ATOL = 1e-5


def build(cell: str, head: str, seed: int = 0) -> StreamingModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        features=SPEC,
        cell=cell,
        head="forecast" if head == DRIFT else head,
        hidden_size=8,
        num_layers=2,
        num_classes=3,
        adaptive_inputs=head == DRIFT,
    )
    model = StreamingModel(config)
    model.fit_normalization(np.array([[1.0, -2.0, 0, 0], [3.0, 2.0, 0, 0]], np.float32))
    return model.eval()


def events(n: int, num_keys: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys interleaved at random, irregular gaps (0 to 60 s, some equal times), tokens 0..3."""
    rng = np.random.default_rng(seed)
    keys = [f"key-{i}" for i in rng.integers(0, num_keys, n)]
    times = np.cumsum(rng.choice([0, 10, 250, 4_000, 60_000], n)).astype(np.int64)
    x = np.zeros((n, SPEC.input_size), np.float32)
    x[:, :2] = rng.normal(size=(n, 2)) * [1.0, 2.0] + [2.0, 0.0]
    x[:, 2] = rng.integers(0, 4, n)
    return keys, times, x


def offline(model: StreamingModel, keys: list[str], times: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Every key's whole sequence through ``forward`` (time delta filled here, independently)."""
    out = np.zeros((len(keys), model.output_size), np.float32)
    for key in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        xk = x[idx].copy()
        xk[:, -1] = np.r_[0.0, np.diff(times[idx]) / 1000.0]
        with torch.no_grad():
            o, _ = model(torch.from_numpy(xk)[None])
        out[idx] = o[0].numpy()
    return out


def stream(scorer: StreamScorer, keys: list[str], times: np.ndarray, x: np.ndarray, batch: int) -> np.ndarray:
    parts = [
        scorer.score(keys[i : i + batch], times[i : i + batch], x[i : i + batch])
        for i in range(0, len(keys), batch)
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize(("cell", "head"), COMBOS, ids=IDS)
def test_streaming_equals_forward(cell: str, head: str) -> None:
    model = build(cell, head)
    keys, times, x = events(120, num_keys=5)
    streamed = stream(StreamScorer(model), keys, times, x, batch=16)
    np.testing.assert_allclose(streamed, offline(model, keys, times, x), atol=ATOL)
    # and the bare step loop, key by key, ends in forward's final state
    key_idx = [i for i, k in enumerate(keys) if k == keys[0]]
    xk = torch.from_numpy(offline_inputs(keys, times, x, key_idx))
    with torch.no_grad():
        _, final = model(xk[None])
        state = model.init_state(1)
        for t in range(xk.shape[0]):
            _, state = model.step(xk[t : t + 1], state)
    torch.testing.assert_close(state, final, atol=ATOL, rtol=0)


def offline_inputs(keys: list[str], times: np.ndarray, x: np.ndarray, idx: list[int]) -> np.ndarray:
    xk = x[idx].copy()
    xk[:, -1] = np.r_[0.0, np.diff(times[idx]) / 1000.0]
    return xk


@pytest.mark.parametrize(("cell", "head"), COMBOS, ids=IDS)
def test_seeded_determinism(cell: str, head: str) -> None:
    keys, times, x = events(40, num_keys=4, seed=1)
    a = stream(StreamScorer(build(cell, head, seed=3)), keys, times, x, batch=8)
    b = stream(StreamScorer(build(cell, head, seed=3)), keys, times, x, batch=8)
    np.testing.assert_array_equal(a, b)
    c = stream(StreamScorer(build(cell, head, seed=4)), keys, times, x, batch=8)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("cell", "head"), COMBOS, ids=IDS)
def test_save_load_same_outputs(cell: str, head: str, tmp_path) -> None:
    model = build(cell, head)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    keys, times, x = events(40, num_keys=4, seed=2)
    np.testing.assert_array_equal(
        stream(StreamScorer(model), keys, times, x, batch=8),
        stream(StreamScorer(loaded), keys, times, x, batch=8),
    )


@pytest.mark.parametrize(("cell", "head"), COMBOS, ids=IDS)
def test_snapshot_restore_continues_the_stream(cell: str, head: str, tmp_path) -> None:
    model = build(cell, head)
    keys, times, x = events(80, num_keys=6, seed=3)
    uninterrupted = stream(StreamScorer(model), keys, times, x, batch=10)

    first = StreamScorer(model)
    stream(first, keys[:40], times[:40], x[:40], batch=10)
    path = str(tmp_path / "snap.arrow")
    first.store.snapshot(None, path, metadata={"next_offset": "40"})
    store = KeyedStateStore(model.config.state_shape)
    store.scatter(["someone-else"], torch.ones(1, *model.config.state_shape), np.array([0]))
    assert store.restore(path) == {"next_offset": "40"}
    resumed = stream(StreamScorer(model, store), keys[40:], times[40:], x[40:], batch=10)
    np.testing.assert_allclose(resumed, uninterrupted[40:], atol=ATOL)


@pytest.mark.parametrize(("cell", "head"), COMBOS, ids=IDS)
def test_batch_of_distinct_keys_equals_one_at_a_time(cell: str, head: str) -> None:
    model = build(cell, head)
    keys = [f"key-{i}" for i in range(12)]
    rounds = [events(12, num_keys=1, seed=10 + r) for r in range(3)]
    batched, single = StreamScorer(model), StreamScorer(model)
    for r, (_, times, x) in enumerate(rounds):
        times = times + 100_000 * r
        together = batched.score(keys, times, x)
        alone = np.concatenate(
            [single.score(keys[i : i + 1], times[i : i + 1], x[i : i + 1]) for i in range(12)]
        )
        np.testing.assert_allclose(together, alone, atol=ATOL)


@pytest.mark.parametrize(("cell", "head"), COMBOS, ids=IDS)
def test_repeated_keys_in_a_batch_equal_in_order(cell: str, head: str) -> None:
    model = build(cell, head)
    keys, times, x = events(60, num_keys=3, seed=4)  # ~20 events a key in one batch
    one_batch = StreamScorer(model).score(keys, times, x)
    in_order = stream(StreamScorer(model), keys, times, x, batch=1)
    np.testing.assert_allclose(one_batch, in_order, atol=ATOL)
    chunked = StreamScorer(model, step_rows=16).score(keys, times, x)  # repeats span step chunks
    np.testing.assert_allclose(chunked, in_order, atol=ATOL)
