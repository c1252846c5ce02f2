"""The compiled GRU gates (:mod:`rnnstream.rnn_core.gru_kernels`) and the scorer's step into the slab
(:mod:`rnnstream.rnn_core.slab_step`): equal to torch's ``gru_cell`` and to ``StreamingModel.step`` within a
few float32 ulps, and used only where the model is a plain one-layer GRU; with MKL's products inside the
compiled pass (:mod:`rnnstream.rnn_core.mkl_gemm`) as with torch's."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnstream.rnn_core import mkl_gemm
from rnnstream.rnn_core.config import CELLS, FeatureSpec, ModelConfig
from rnnstream.rnn_core.gru_kernels import gru_gates, gru_gates_scatter, gru_rows, tanh_sigmoid
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.slab_step import GateBuffers, SlabGruStep, slab_stepper
from rnnstream.rnn_core.stream_scorer import StreamScorer
from tests.rnn_core.test_contract import SPEC


def test_tanh_and_sigmoid_within_a_few_ulps_of_torch_everywhere() -> None:
    grid = np.linspace(-40, 40, 400_001, dtype=np.float32)
    tiny = np.float32(10) ** np.linspace(-30, 1.6, 20_000, dtype=np.float32)
    special = np.array([np.inf, -np.inf, 0.0, -0.0, 7.9, 7.91, 88.0, -88.0, 1e30, -1e30], np.float32)
    x = np.concatenate([grid, tiny, -tiny, special])
    tanh, sigmoid = np.empty_like(x), np.empty_like(x)
    tanh_sigmoid(x, tanh, sigmoid)
    ref_tanh = torch.tanh(torch.from_numpy(x)).numpy()
    ref_sigmoid = torch.sigmoid(torch.from_numpy(x)).numpy()
    assert np.abs(tanh - ref_tanh).max() <= 5e-7
    assert np.abs(sigmoid - ref_sigmoid).max() <= 3e-7
    assert np.all(np.abs(tanh) <= 1) and np.all((sigmoid >= 0) & (sigmoid <= 1))
    small = np.abs(x) < 1e-3  # relative accuracy where tanh(x) ~ x
    np.testing.assert_allclose(tanh[small], ref_tanh[small], rtol=1e-6, atol=0)
    nan = np.array([np.nan], np.float32)
    tanh_sigmoid(nan, tanh[:1], sigmoid[:1])
    assert np.isnan(tanh[0]) and np.isnan(sigmoid[0])


def test_gates_equal_gru_cell_and_scatter_into_the_slab() -> None:
    rng = np.random.default_rng(0)
    n_in, hidden, rows = 5, 16, 300

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32))

    w_ih, w_hh = (tensor(rng.normal(0, 0.8, (3 * hidden, k))) for k in (n_in, hidden))
    b_ih, b_hh = (tensor(rng.normal(0, 0.5, 3 * hidden)) for _ in range(2))
    x = tensor(rng.normal(0, 2, (rows, n_in)))
    h = tensor(np.tanh(rng.normal(0, 1, (rows, hidden))))
    gi = torch.addmm(b_ih, x, w_ih.t()).numpy()
    gh = torch.addmm(b_hh, h, w_hh.t()).numpy()
    ref = torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh).numpy()
    out = np.empty((rows, hidden), np.float32)
    gru_gates(gi, gh, h.numpy(), out)
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    slab = np.zeros((1000, hidden), np.float32)
    slab_times = np.full(1000, -1, np.int64)
    slots = rng.permutation(1000)[:rows].astype(np.int64)
    times = np.arange(rows, dtype=np.int64) + 7
    again = np.empty_like(out)
    head_w = rng.normal(0, 3, hidden).astype(np.float32)
    scores = np.full(rows + 3, -1.0, np.float32)
    events = rng.permutation(rows + 3)[:rows]  # the rows' places in the batch (times and scores)
    batch_times = np.zeros(rows + 3, np.int64)
    batch_times[events] = times
    args = (slab, slots, slab_times, batch_times, events, head_w, -0.5, scores)
    gru_gates_scatter(gi, gh, h.numpy(), again, *args)
    np.testing.assert_array_equal(again, out)
    ref_scores = torch.sigmoid(torch.from_numpy(again) @ torch.from_numpy(head_w) - 0.5).numpy()
    np.testing.assert_allclose(scores[events], ref_scores, rtol=1e-5, atol=1e-7)
    assert (np.delete(scores, events) == -1.0).all()
    np.testing.assert_array_equal(slab[slots], out)
    np.testing.assert_array_equal(slab_times[slots], times)
    untouched = np.setdiff1d(np.arange(1000), slots)
    assert not slab[untouched].any() and (slab_times[untouched] == -1).all()
    with pytest.raises(IndexError):
        outside = np.array([1000])
        none = np.zeros(0, np.float32)  # no head
        one = (gi[:1], gh[:1], h.numpy()[:1], again[:1])
        gru_gates_scatter(*one, slab, outside, slab_times, times[:1], np.zeros(1, np.int64), none, 0, none)


def model_of(cell: str, layers: int, head: str = "binary") -> StreamingModel:
    torch.manual_seed(3)
    spec = FeatureSpec(numeric=("a", "b", "c"), use_time_delta=True)
    config = ModelConfig(features=spec, cell=cell, head=head, hidden_size=12, num_layers=layers)
    model = StreamingModel(config)
    model.fit_normalization(np.random.default_rng(1).normal(2.0, 3.0, (64, spec.input_size)))
    return model.eval()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_slab_step_only_for_a_plain_one_layer_gru(cell: str, layers: int) -> None:
    model = model_of(cell, layers)
    buffers = GateBuffers(model.hidden_size)
    with torch.inference_mode():
        assert (slab_stepper(model, buffers) is not None) == (cell == "gru" and layers == 1)
        assert slab_stepper(model, None) is None
    assert slab_stepper(model, buffers) is None  # autograd on: the model's own step


@pytest.mark.parametrize("head", ["binary", "forecast", "forecast-static", "next_token"])
def test_scorer_stepping_into_the_slab_equals_model_step(head: str) -> None:
    """Batches with repeated keys and time deltas: outputs and stored states as ``step`` one event at a
    time gives them."""
    spec = SPEC  # numeric, categorical (column 2, codes 0-3) and the time delta
    torch.manual_seed(5)
    adaptive = head != "forecast-static"  # the adaptive likelihood: the model's own step
    config = ModelConfig(spec, "gru", head.split("-")[0], hidden_size=10, adaptive_score=adaptive)
    model = StreamingModel(config).eval()
    model.fit_normalization(np.random.default_rng(2).normal(1.0, 2.0, (50, spec.input_size)))
    rng = np.random.default_rng(4)
    scorer = StreamScorer(model, step_rows=16)
    names = [f"k{i}" for i in range(40)]
    states = {k: model.init_state(1) for k in names}
    last: dict[str, int] = {}
    for batch in range(3):
        keys = [names[i] for i in rng.integers(0, 40, 64)]
        times = np.sort(rng.integers(0, 10_000, 64)) + 10_000 * batch
        x = rng.normal(0, 2, (64, spec.input_size)).astype(np.float32)
        x[:, 2] = rng.integers(0, 4, 64)
        out = scorer.score(keys, times, x)
        with torch.inference_mode():
            for i, key in enumerate(keys):
                row = torch.from_numpy(x[i : i + 1].copy())
                row[0, -1] = (times[i] - last[key]) / 1000 if key in last else 0.0
                ref, states[key] = model.step(row, states[key])
                last[key] = int(times[i])
                np.testing.assert_allclose(out[i], ref[0].numpy(), atol=2e-6, rtol=0)
    # the slab step ran (its buffers grew), except for the forecast head's adaptive likelihood (its own step)
    ran = scorer._gates is not None and scorer._gates.gi.shape[0] == 16  # the slab step's buffers
    assert ran == (not model.adaptive)
    stored = scorer.store.gather(names).numpy()
    np.testing.assert_allclose(stored, torch.cat([states[k] for k in names]).numpy(), atol=2e-6, rtol=0)


def test_slab_step_follows_changed_weights() -> None:
    """The step kept between batches is rebuilt when the cell's or the head's weights change in place."""
    model = model_of("gru", 1)
    scorer = StreamScorer(model)
    x = np.random.default_rng(6).normal(0, 1, (5, model.config.features.input_size)).astype(np.float32)
    x[:, -1] = 0.0  # the time delta of a key's first event
    keys = [f"k{i}" for i in range(5)]
    for change in (None, "head", "cell"):
        if change is not None:
            with torch.no_grad():
                (model.head.bias if change == "head" else model.rnn.weight_ih_l0).add_(0.7)
        scorer.remove_keys(keys)
        out = scorer.score(keys, np.zeros(5, np.int64), x)
        with torch.inference_mode():
            ref, _ = model.step(torch.from_numpy(x), model.init_state(5))
        np.testing.assert_allclose(out, ref.numpy(), atol=2e-6, rtol=0)


class FailingHeadModel(StreamingModel):
    """A plain one-layer GRU (the slab step applies) whose head raises on an input of 1234.5: the failure
    comes after the chunk's new states were written into the slab."""

    def _outputs(self, x, top_before, top_after, inputs=None):  # type: ignore[no-untyped-def]
        if bool((x == 1234.5).any()):
            raise RuntimeError("poison row")
        return super()._outputs(x, top_before, top_after, inputs)


def test_a_failing_call_through_the_slab_step_changes_no_state() -> None:
    config = ModelConfig(SPEC, "gru", "forecast", hidden_size=6, adaptive_score=False)
    torch.manual_seed(2)
    model = FailingHeadModel(config).eval()
    scorer = StreamScorer(model, step_rows=8)
    rng = np.random.default_rng(3)
    names = [f"k{i}" for i in range(12)]
    x = rng.normal(0, 1, (40, SPEC.input_size)).astype(np.float32)
    x[:, 2] = 1.0
    keys = [names[i] for i in rng.integers(0, 12, 40)]
    scorer.score(keys, np.arange(40), x)
    before, before_times = scorer.store.gather(names).clone(), scorer.store.last_times(names)
    x[30, 0] = 1234.5  # a late chunk fails, after earlier chunks (and its own gates) wrote the slab
    with pytest.raises(RuntimeError, match="poison row"):
        scorer.score(keys, np.arange(40) + 100, x)
    assert scorer._gates is not None and scorer._gates.step is not None  # the slab step ran
    assert torch.equal(scorer.store.gather(names), before)
    np.testing.assert_array_equal(scorer.store.last_times(names), before_times)


def test_mkl_products_found_where_torch_carries_mkl() -> None:
    """On x86-64 Linux torch's wheels link MKL: the compiled step must find it there (else every test
    below that needs it would be skipped without anyone noticing)."""
    if sys.platform == "linux" and platform.machine() == "x86_64" and torch.backends.mkl.is_available():
        assert mkl_gemm.AVAILABLE


needs_mkl = pytest.mark.skipif(not mkl_gemm.AVAILABLE, reason="torch here carries no MKL sgemm")


@needs_mkl
def test_step_with_mkl_products_equals_gru_cell() -> None:
    rng = np.random.default_rng(8)
    n_in, hidden = 7, 24
    w_ih, w_hh = (rng.normal(0, 0.6, (3 * hidden, k)).astype(np.float32) for k in (n_in, hidden))
    b_ih, b_hh = (rng.normal(0, 0.5, 3 * hidden).astype(np.float32) for _ in range(2))
    gi, gh = (np.full((300, 3 * hidden), np.nan, np.float32) for _ in range(2))  # reused, larger than m
    for m in (0, 1, 37, 300):
        x = rng.normal(0, 2, (m, n_in)).astype(np.float32)
        h = np.tanh(rng.normal(0, 1, (m, hidden))).astype(np.float32)
        out = np.full((m, hidden), np.nan, np.float32)
        gru_rows(x, h, np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_ih, b_hh, gi, gh, out)
        t = torch.from_numpy
        ref = torch.gru_cell(t(x), t(h), t(w_ih), t(w_hh), t(b_ih), t(b_hh)).numpy()
        np.testing.assert_allclose(out, ref, atol=2e-6, rtol=0)


def continuous_model(seed: int, head: str = "binary") -> StreamingModel:
    """A one-layer GRU on continuous features only, no time delta, its normalization folded into the
    weights: the cell inputs are the event rows themselves (the scorer's whole-batch step)."""
    torch.manual_seed(seed)
    spec = FeatureSpec(numeric=tuple("abcde"))
    config = ModelConfig(features=spec, cell="gru", head=head, hidden_size=16, adaptive_score=False)
    model = StreamingModel(config)
    model.fit_normalization(np.random.default_rng(seed).normal(1.0, 2.0, (64, 5)))
    return model.eval()


@needs_mkl
@pytest.mark.parametrize("head", ["binary", "forecast"])
def test_whole_batch_step_equals_model_step(head: str) -> None:
    """Batches with many repeated keys (several waves of chunks): outputs and stored states as ``step`` one
    event at a time gives them; the binary head takes the whole-batch call, the others chunk by chunk."""
    model = continuous_model(11, head)
    scorer = StreamScorer(model, step_rows=8)
    rng = np.random.default_rng(12)
    names = [f"k{i}" for i in range(30)]
    states = {k: model.init_state(1) for k in names}
    for batch in range(3):
        keys = [names[i] for i in rng.integers(0, 30, 90)]
        x = rng.normal(1, 2, (90, 5)).astype(np.float32)
        out = scorer.score(keys, np.arange(90) + 100 * batch, x)
        with torch.inference_mode():
            for i, key in enumerate(keys):
                ref, states[key] = model.step(torch.from_numpy(x[i : i + 1]), states[key])
                np.testing.assert_allclose(out[i], ref[0].numpy(), atol=2e-6, rtol=0)
    assert scorer._gates is not None and scorer._gates.step is not None
    assert scorer._gates.step.whole_batch == (head == "binary")
    stored = scorer.store.gather(names).numpy()
    np.testing.assert_allclose(stored, torch.cat([states[k] for k in names]).numpy(), atol=2e-6, rtol=0)


@needs_mkl
def test_mkl_and_addmm_products_step_a_chunk_alike() -> None:
    """The chunk step with MKL's products in the compiled pass and with torch's ``addmm`` (the path where
    torch has no MKL) write the same states, times and scores."""
    model = model_of("gru", 1)  # numeric features and the time delta: the cell inputs are made in torch
    rng = np.random.default_rng(13)
    m, width = 20, model.config.features.input_size
    xb = rng.normal(0, 1, (m, width)).astype(np.float32)
    h_prev = np.tanh(rng.normal(0, 1, (m, model.hidden_size))).astype(np.float32)
    slots = rng.permutation(50)[:m].astype(np.int64)
    events = rng.permutation(m)
    times = np.arange(m, dtype=np.int64) + 5
    results = []
    with torch.inference_mode():
        folded, weights = model._inference_weights()
        for use_mkl in (True, False):
            step = SlabGruStep(model, GateBuffers(model.hidden_size), folded, weights, use_mkl=use_mkl)
            rows, slot_times = np.zeros((50, model.hidden_size), np.float32), np.full(50, -1, np.int64)
            out = np.full((m, 1), np.nan, np.float32)
            step.chunk(xb, h_prev, rows, slot_times, slots, times, events, out)
            results.append((rows, slot_times, out))
    (rows_a, times_a, out_a), (rows_b, times_b, out_b) = results
    np.testing.assert_allclose(rows_a, rows_b, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(times_a, times_b)
    np.testing.assert_allclose(out_a, out_b, atol=1e-6, rtol=0)
    assert np.abs(rows_a[slots]).sum() > 0 and not np.isnan(out_a).any()


@needs_mkl
def test_whole_batch_step_failing_part_way_is_undone() -> None:
    """A slot outside the slab in the third chunk: the call raises having stepped exactly the first two
    chunks (``done``), and rolling back what the undo log then holds puts every state and time back."""
    model = continuous_model(14)
    scorer = StreamScorer(model, step_rows=4)
    keys = [f"k{i}" for i in range(12)]
    rng = np.random.default_rng(15)
    scorer.score(keys, np.zeros(12, np.int64), rng.normal(0, 1, (12, 5)).astype(np.float32))
    store, undo = scorer.store, scorer._undo
    before, before_times = store.gather(keys).clone(), store.last_times(keys)
    slots = store.lookup(keys, create=False)
    slots[9] = store.capacity + 3  # the third chunk
    with torch.inference_mode():
        step = slab_stepper(model, scorer._gates)
    assert step is not None and step.whole_batch
    rows, slot_times = store.slab()
    x, times = rng.normal(0, 1, (12, 5)).astype(np.float32), np.full(12, 50, np.int64)
    bounds = np.array([0, 4, 8, 12])
    h_prev, prev, chunk_slots = np.empty((12, 16), np.float32), np.empty(12, np.int64), np.empty(12, np.int64)
    undo.begin()
    start, h_prev = undo.reserve(12)
    done = np.zeros(1, np.int64)
    out = np.zeros((12, 1), np.float32)
    xbuf = np.empty((4, 5), np.float32)
    with pytest.raises(IndexError):
        step.batch(
            x,
            np.arange(12),
            bounds,
            slots,
            times,
            rows,
            slot_times,
            xbuf,
            h_prev,
            prev,
            chunk_slots,
            out,
            done,
        )
    assert done[0] == 8
    assert not torch.equal(store.gather(keys[:8]), before[:8])  # the first two chunks were stepped
    assert (store.last_times(keys[:8]) == 50).all() and (store.last_times(keys[8:]) == 0).all()
    undo.log_chunks(store, start, chunk_slots, prev, bounds.tolist(), int(done[0]))
    undo.roll_back(store)
    undo.end()
    assert torch.equal(store.gather(keys), before)
    np.testing.assert_array_equal(store.last_times(keys), before_times)


def test_mkl_can_be_turned_off_and_the_scorer_still_steps_alike() -> None:
    """``RNNSTREAM_MKL=0`` (read once, as the package is imported) leaves MKL out, and the scorer's step
    falls back to torch's products with the same scores."""
    code = """
import json, sys
import numpy as np
from rnnstream.rnn_core import mkl_gemm
from tests.rnn_core.test_gru_kernels import continuous_model
from rnnstream.rnn_core.stream_scorer import StreamScorer
scorer = StreamScorer(continuous_model(16), step_rows=8)
x = np.random.default_rng(17).normal(0, 1, (40, 5)).astype(np.float32)
out = scorer.score([f"k{i % 13}" for i in range(40)], np.arange(40), x)
print(json.dumps({"mkl": mkl_gemm.AVAILABLE, "out": out[:, 0].tolist()}))
"""
    runs = {}
    for flag in ("0", "1"):
        env = {**os.environ, "RNNSTREAM_MKL": flag}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        runs[flag] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["0"]["mkl"] is False
    assert runs["1"]["mkl"] is mkl_gemm.AVAILABLE
    np.testing.assert_allclose(runs["0"]["out"], runs["1"]["out"], atol=1e-6, rtol=0)
