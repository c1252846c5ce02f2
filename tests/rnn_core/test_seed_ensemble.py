"""Seed ensembles folded into one model: its logits are the members' mean, forward and step alike."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.seed_ensemble import can_fold, fold_members
from rnnstream.rnn_core.training import seeded_model


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out, _ = model(x)
    if model.head_kind == "binary":
        return torch.logit(out.double())
    return torch.log(out.double())  # multiclass: log-softmax, equal up to a per-event constant


@pytest.mark.parametrize(("cell", "head", "layers"), [("gru", "binary", 1), ("lstm", "multiclass", 2)])
def test_folded_model_averages_the_members_logits(cell, head, layers):
    spec = FeatureSpec(numeric=("a", "b", "c"))
    config = ModelConfig(features=spec, cell=cell, head=head, hidden_size=6, num_layers=layers, num_classes=3)
    members = [seeded_model(config, seed=s) for s in range(3)]
    for m in members:
        m.norm_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        m.norm_std.copy_(torch.tensor([2.0, 0.5, 1.5]))
        m.eval()
    x = torch.randn(4, 30, spec.input_size, generator=torch.Generator().manual_seed(0))
    folded = fold_members(members)
    assert folded.hidden_size == 18 and folded.state_shape[-1] == 18
    mean = torch.stack([_logits(m, x) for m in members]).mean(0)
    got = _logits(folded, x)
    if head == "multiclass":  # softmax(mean logits): compare log-probabilities up to their per-event shift
        mean, got = mean - mean.mean(-1, keepdim=True), got - got.mean(-1, keepdim=True)
    assert torch.allclose(got, mean, atol=1e-4)
    # the streaming step sees the same model
    state = folded.init_state(4)
    stepped = []
    for t in range(x.shape[1]):
        out, state = folded.step(x[:, t], state)
        stepped.append(out)
    assert torch.allclose(torch.stack(stepped, 1), folded(x)[0], atol=1e-5)


def test_only_classifiers_without_embeddings_fold():
    forecast = seeded_model(ModelConfig(features=FeatureSpec(numeric=("a",)), head="forecast", hidden_size=4))
    assert not can_fold(forecast)
    with pytest.raises(ValueError):
        fold_members([forecast, forecast])
    small = ModelConfig(features=FeatureSpec(numeric=("a",)), head="binary", hidden_size=4)
    with pytest.raises(ValueError):
        fold_members([seeded_model(small), seeded_model(replace(small, hidden_size=5))])
