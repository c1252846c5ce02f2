"""``StreamingModel.stepper``: bit for bit ``step`` where it takes a shortcut, ``step`` itself elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnstream.rnn_core.config import CELLS, FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from tests.rnn_core.test_contract import SPEC, build


@pytest.mark.parametrize("head", ["binary", "forecast", "next_token"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_stepper_equals_step_exactly(cell: str, head: str, layers: int) -> None:
    torch.manual_seed(1)
    model = StreamingModel(ModelConfig(features=SPEC, cell=cell, head=head, hidden_size=8, num_layers=layers))
    model.fit_normalization(np.array([[1.0, -2.0, 0, 0], [3.0, 2.0, 0, 0]], np.float32))
    model.eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(17, SPEC.input_size)).astype(np.float32))
    x[:, 2] = torch.from_numpy(rng.integers(0, 4, 17).astype(np.float32))
    state = torch.from_numpy(rng.normal(size=(17, *model.state_shape)).astype(np.float32))
    with torch.inference_mode():
        step = model.stepper()
        assert (step == model.step) == model.adaptive  # a shortcut, but not past the adaptive likelihood
        for _ in range(3):  # a run of calls, each from the state the last one left
            out, new_state = step(x, state)
            ref_out, ref_state = model.step(x, state)
            assert torch.equal(out, ref_out)
            assert torch.equal(new_state, ref_state)
            assert new_state.shape == state.shape
            state = new_state


def test_stepper_is_step_where_no_shortcut_holds() -> None:
    model = build("gru", "forecast+inputs")  # per-key input normalization
    with torch.inference_mode():
        assert model.stepper() == model.step
    spec = FeatureSpec(numeric=("a",))
    plain = StreamingModel(ModelConfig(features=spec, cell="gru", head="binary", hidden_size=4)).eval()
    assert plain.stepper() == plain.step  # autograd on
    with torch.inference_mode():
        assert plain.stepper() != plain.step
        assert plain.train().stepper() == plain.step  # training mode
    stateless = StreamingModel(ModelConfig(features=spec, cell="gru", head="binary", stateless=True)).eval()
    with torch.inference_mode():
        assert stateless.stepper() == stateless.step
