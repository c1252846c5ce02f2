"""Weight averaging in fit: the kept weights are the per-step EMA of the trained ones, validated as such."""

from __future__ import annotations

import math

import pytest
import torch

from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.training import (
    evaluate_loss,
    fit,
    planned_steps,
    seed_everything,
    seeded_model,
    train_epoch,
)
from rnnstream.rnn_core.weight_averaging import ema_decay
from tests.rnn_core.test_training import CUE_SPEC, cue_task


def _config() -> ModelConfig:
    return ModelConfig(features=CUE_SPEC, cell="gru", head="binary", hidden_size=8)


def test_decay_has_a_time_constant_in_epochs():
    decay = ema_decay(2.0, 50)
    assert decay**100 == pytest.approx(math.exp(-1.0))  # 2 epochs of 50 steps: weight e^-1
    assert ema_decay(1.0, 0) == pytest.approx(math.exp(-1.0))  # an empty epoch counts as one step
    with pytest.raises(ValueError):
        ema_decay(0.0, 10)


def test_fit_keeps_the_exponential_average_of_every_steps_weights():
    train = cue_task(24, 9, seed=1)
    kw = {"chunk_len": 3, "batch_keys": 5}
    averaged = seeded_model(_config(), seed=4)
    fit(averaged, train, epochs=3, lr=0.05, seed=4, average_epochs=0.7, **kw)

    # the same run by hand: every step's weights folded into an EMA with fit's decay
    model = seeded_model(_config(), seed=4)
    seed_everything(4)
    model.fit_normalization(train.all_x())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    decay = ema_decay(0.7, planned_steps(train, kw["chunk_len"], kw["batch_keys"]))
    ema: dict[str, torch.Tensor] = {}

    def fold() -> None:
        for name, p in model.named_parameters():
            old = ema.get(name)
            ema[name] = p.detach().clone() if old is None else decay * old + (1 - decay) * p.detach()

    for epoch in range(3):
        step = None if epoch == 0 else fold  # the average starts with the second epoch
        train_epoch(model, optimizer, train, seed=4, epoch=epoch, after_step=step, **kw)
    kept = dict(averaged.named_parameters())
    last = dict(model.named_parameters())
    for name, value in ema.items():
        torch.testing.assert_close(kept[name].detach(), value, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(kept[n], last[n]) for n in ema)  # the average is not the last step
    torch.testing.assert_close(averaged.norm_std, model.norm_std)  # buffers come from the trained model


def test_early_stopping_validates_and_keeps_the_averaged_weights():
    train, val = cue_task(24, 9, seed=1), cue_task(12, 9, seed=2)
    model = seeded_model(_config(), seed=0)
    result = fit(model, train, epochs=6, lr=0.05, chunk_len=3, batch_keys=5, validation=val, patience=2,
                 average_epochs=1.0)  # fmt: skip
    best = result.history[result.best_epoch]["val_loss"]
    assert best == min(r["val_loss"] for r in result.history)
    assert evaluate_loss(model, val, chunk_len=256) == pytest.approx(best, rel=1e-6)
