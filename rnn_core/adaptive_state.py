"""Where a forecast model's per-key adaptive statistics live in the state, and the drift-following inputs.

A key's state is ``[S + E, L, H]``: ``S`` recurrent tensors, then ``E`` statistics slabs
(:attr:`ModelConfig.statistics_slabs`) read as one flat row of ``E * L * H`` values per key:

- ``[0, 6)``: the adaptive score's error statistics (:mod:`rnnstream.rnn_core.anomaly_likelihood`);
- ``[6, 6 + 1 + 3n)``, with ``adaptive_inputs``: the key's input level, scale and outlier runs
  (:mod:`rnnstream.rnn_core.input_drift`); the rest is zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from rnnstream.rnn_core.anomaly_likelihood import NUM_STATS
from rnnstream.rnn_core.input_drift import drift_stats_size, key_level_scale, normalize_sequence

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel


class KeyInputs(NamedTuple):
    """Continuous inputs normalized with each key's own level and scale (before each event), the level and
    scale after each event (to put a forecast of the next event back in original units) and the new
    statistics row ``[B, 1 + 3n]``."""

    normalized: Tensor
    level: Tensor
    scale: Tensor
    stats: Tensor


def extra_row(model: StreamingModel, state: Tensor) -> Tensor:
    """The flat statistics row ``[B, E * L * H]`` of ``state[B, S + E, L, H]``."""
    return state[:, model.num_state :].reshape(state.shape[0], -1)


def with_extra_row(model: StreamingModel, rnn: Tensor, row: Tensor) -> Tensor:
    """The recurrent part of ``rnn[B, S(+E), L, H]`` with the statistics row ``row`` as its last slabs."""
    b = rnn.shape[0]
    s = model.num_state
    extra = row.reshape(b, model.state_shape[0] - s, model.num_layers, model.hidden_size)
    return torch.cat([rnn[:, :s], extra], dim=1)


def drift_slice(model: StreamingModel) -> slice:
    return slice(NUM_STATS, NUM_STATS + drift_stats_size(model.num_continuous))


def key_inputs(model: StreamingModel, x: Tensor, state: Tensor | None) -> KeyInputs:
    """Each key's drift-following normalization of ``x[B, T, D]``'s continuous columns from ``state``."""
    b = x.shape[0]
    n = model.num_continuous
    if state is None:
        stats = x.new_zeros((b, drift_stats_size(n)))
    else:
        stats = extra_row(model, state)[:, drift_slice(model)]
    return KeyInputs(
        *normalize_sequence(x[..., model._cont], stats, model.norm_mean, model.norm_std.square(), model.drift)
    )


def key_level_scale_of(model: StreamingModel, state: Tensor) -> tuple[Tensor, Tensor]:
    """Each key's input (level, scale) ``[B, n]`` now: its own with ``adaptive_inputs``, else the model's."""
    if not model.drift_inputs:
        b = state.shape[0]
        return model.norm_mean.expand(b, -1), model.norm_std.expand(b, -1)
    stats = extra_row(model, state)[:, drift_slice(model)]
    return key_level_scale(stats, model.norm_mean, model.norm_std.square(), model.drift)
