"""An exponential moving average of a model's weights over its last epochs of training (Polyak averaging).

The weights of one optimizer step depend on the last few batches and on the seed; their average over the
last epochs sits nearer the middle of the basin the run has settled in, so held-out quality varies less
between seeds and runs. :func:`rnnstream.rnn_core.training.fit` validates, early-stops on and keeps the
averaged weights when given ``average_epochs``, starting the average with the second epoch (the first
epoch's weights are still far from where training settles).

The time constant is counted in epochs, not steps, so it means the same for a small file and a large one:
after every optimizer step the average moves ``1 - decay`` of the way to the current weights, with
``decay = exp(-1 / (average_epochs * steps_per_epoch))``. Averaging is torch's
:class:`~torch.optim.swa_utils.AveragedModel` with its EMA update; buffers (input normalization, score
calibration) are not averaged but copied from the trained model before the average is used.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["WeightAverage", "ema_decay"]


def ema_decay(average_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay of an average whose time constant is ``average_epochs`` epochs."""
    if average_epochs <= 0:
        raise ValueError("average_epochs must be > 0")
    return math.exp(-1.0 / (average_epochs * max(1, steps_per_epoch)))


class WeightAverage:
    """The running average of ``model``'s parameters: call :meth:`update` after every optimizer step."""

    def __init__(self, model: nn.Module, average_epochs: float, steps_per_epoch: int) -> None:
        self.decay = ema_decay(average_epochs, steps_per_epoch)
        self._model = model
        self._averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay))

    @torch.no_grad()
    def update(self) -> None:
        self._averaged.update_parameters(self._model)

    @torch.no_grad()
    def averaged_model(self) -> nn.Module:
        """A model with the averaged parameters and the trained model's current buffers (eval it, read its
        ``state_dict``; do not train it)."""
        module = self._averaged.module
        for mine, theirs in zip(module.buffers(), self._model.buffers(), strict=True):
            mine.copy_(theirs)
        return module
