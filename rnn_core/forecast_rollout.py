"""Forecast heads: generate future events from a key's state by feeding each forecast back as the next
input (what :meth:`StreamingModel.rollout` returns)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from rnnstream.rnn_core.config import ConfigError

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel


@torch.no_grad()
def rollout(
    model: StreamingModel, state: Tensor, steps: int, step_seconds: float = 1.0, x_last: Tensor | None = None
) -> Tensor:
    """Forecast heads: generate ``steps`` future events from ``state[B, S, L, H]`` -> ``[B, steps, n]``.

    Each forecast (original units) is fed back as the next input, with a time delta of ``step_seconds``;
    categorical inputs repeat those of ``x_last[B, D]`` (the key's last event) or are "unknown" (0).
    The first row equals the ``forecast_*`` columns of the event that produced ``state``.
    """
    if model.head_kind != "forecast":
        raise ConfigError(f"rollout needs a forecast head, this model has a {model.head_kind} head")
    b = state.shape[0]
    fixed = []
    if model.num_categorical:
        codes = (
            model._codes(x_last)
            if x_last is not None
            else torch.zeros((b, model.num_categorical), dtype=torch.long, device=state.device)
        )
        fixed.append(model.embedding(codes + model.cat_offsets).flatten(-2))
    if model._dt is not None:
        fixed.append(torch.full((b, 1), float(np.log1p(max(step_seconds, 0.0))), device=state.device))
    from rnnstream.rnn_core.adaptive_state import key_level_scale_of

    level, scale = key_level_scale_of(model, state)
    out = []
    with model._numerics(state):
        for _ in range(steps):
            predicted = model.head(state[:, 0, -1])
            out.append(predicted)
            if model.stateless:
                state = torch.zeros_like(state)
            state = model._cell_step(torch.cat([predicted, *fixed], dim=-1), state)
    if not out:
        return state.new_zeros((b, 0, model.num_continuous))
    return torch.stack(out, dim=1) * scale.unsqueeze(1) + level.unsqueeze(1)
