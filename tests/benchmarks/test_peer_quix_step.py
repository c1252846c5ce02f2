"""The Quix peer's GRU step (``benchmarks/peer_quix_app.py``), numpy and torch, stepped one event at a time
from the weights the peer benchmark exports, equals the served model's full-sequence forward within 1e-5: the
two sides of ``benchmarks/peer_quixstreams.py`` score the same model (its ``scores_equal`` checks the same on
the broker). Runs without ``quixstreams`` (imported only inside the peer's ``main``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_fixtures as e2e
import peer_quix_app
import peer_quixstreams


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_peer_step_equals_the_models_forward(kind: str, tmp_path: Path) -> None:
    model, _ = e2e.seeded_model(tmp_path)
    peer_quixstreams.export_weights(model, tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        w = {k: npz[k].astype(np.float32) for k in npz.files}
    step = peer_quix_app.numpy_step(w) if kind == "numpy" else peer_quix_app.torch_step(w)

    rng = np.random.default_rng(0)
    n = 40
    x = np.round(rng.normal(size=(n, e2e.FEATURES)) * 3, 3).astype(np.float32)
    times = np.cumsum(rng.integers(0, 90_000, n))  # ms, repeated times (dt 0) included
    times[5] = times[4]
    dt = np.zeros(n)
    dt[1:] = np.diff(times) / 1000.0
    with torch.no_grad():
        out, _ = model.forward(torch.from_numpy(np.c_[x, dt.astype(np.float32)][None]), None)
    want = out[0, :, model.output_names().index("score")].numpy()

    h = np.zeros(e2e.HIDDEN, np.float32)
    got = []
    for i in range(n):
        d = 0.0 if i == 0 else float(np.float32(times[i] - times[i - 1]) * np.float32(1e-3))
        h, p = step(x[i].tolist(), h, d)
        got.append(p)
    assert np.abs(np.asarray(got) - want).max() <= 1e-5
    assert np.ptp(want) > 1e-3  # the scores move: a constant output would pass trivially
