"""Where a forecast model's per-key adaptive statistics live in the state, and the drift-following inputs.

A key's state is ``[S + E, L, H]``: ``S`` recurrent tensors, then ``E`` statistics slabs
(:attr:`ModelConfig.statistics_slabs`) read as one flat row of ``E * L * H`` values per key:

- ``[0, 5)``: the adaptive score's first five error statistics (:mod:`rnnstream.rnn_core.anomaly_likelihood`);
- ``[5, 5 + 1 + 3n)``, with ``adaptive_inputs``: the key's input level, scale and outlier runs
  (:mod:`rnnstream.rnn_core.input_drift`);
- then the sixth error statistic (the quiet side's log-ratio variance); the rest is zero.

The sixth statistic came later and goes after the others, so a key state checkpointed before it restores with
every statistic in its place and a zero there: that key learns the quiet spread as a new key does (its quiet
z is bounded by the training errors' meanwhile), instead of reading its drift statistics one place off.
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


LEADING_STATS = NUM_STATS - 1  # error statistics before the drift ones; the last one comes after them


def drift_slice(model: StreamingModel) -> slice:
    """Where the drift-following inputs' statistics lie in the statistics row."""
    return slice(LEADING_STATS, LEADING_STATS + drift_stats_size(model.num_continuous))


def error_stats_columns(model: StreamingModel) -> list[int]:
    """Where the ``NUM_STATS`` error statistics lie in the statistics row, in their order: ``[0, 5)`` and the
    first place after the drift statistics (right after the five without ``adaptive_inputs``)."""
    drift = drift_stats_size(model.num_continuous) if model.config.adaptive_inputs else 0
    return [*range(LEADING_STATS), LEADING_STATS + drift]


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
