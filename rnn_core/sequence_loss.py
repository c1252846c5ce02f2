"""The training loss of a :class:`~rnnstream.rnn_core.model.StreamingModel` over chunks of sequences, per
head (what :meth:`StreamingModel.loss` returns; truncated BPTT carries the final state across chunks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel


def sequence_loss(
    model: StreamingModel,
    x: Tensor,
    y: Tensor | None = None,
    state: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean loss over the valid events of ``x[B, T, D]`` and the final state (to carry across chunks).

    binary: BCE on the logit after the event vs ``y`` (``y`` < 0 or NaN = no label);
    multiclass: cross-entropy vs ``y`` (``y`` < 0 or NaN = no label);
    forecast: MSE, in normalized units, of the prediction from the state before each event vs the event;
    next_token: cross-entropy of the prediction from the state before each event vs its token (no ``y``).
    ``mask[B, T]`` (bool or 0/1) marks real events; padding is excluded.
    """
    per_event, weights, final = event_losses(model, x, y, state, mask)
    return (per_event * weights).sum() / weights.sum().clamp_min(1.0), final


def event_losses(
    model: StreamingModel,
    x: Tensor,
    y: Tensor | None = None,
    state: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(per_event [B, T], weights [B, T] (1 = counts, 0 = padding or no label), final state)``: the terms
    :func:`sequence_loss` averages (also per key, for :mod:`~rnnstream.rnn_core.trimmed_loss`)."""
    top_after, top_before, final, inputs = model._run(x, state)
    valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    kind = model.head_kind
    if kind in ("binary", "multiclass"):
        if y is None:
            raise ValueError(f"a {kind} head needs labels y[B, T]")
        y = torch.as_tensor(y, device=x.device)
        y_float = y.to(torch.float32)
        valid = valid & torch.isfinite(y_float) & (y_float >= 0)
        logits = model.head(top_after)
        if kind == "binary":
            target = torch.where(valid, y_float, 0.0).clamp_max(1.0)
            per_event = F.binary_cross_entropy_with_logits(logits.squeeze(-1), target, reduction="none")
        else:
            valid = valid & (y_float < model.config.num_classes)
            target = torch.where(valid, y_float, 0.0).long()
            per_event = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    elif kind == "forecast":
        predicted = model.head(top_before)
        actual = model._normalized(x) if inputs is None else inputs.normalized  # each key's own, if so
        per_event = (predicted - actual).square().mean(-1)
    else:
        logits = model.head(top_before)
        per_event = F.cross_entropy(logits.transpose(1, 2), model._codes(x)[..., 0], reduction="none")
    return per_event, valid.to(per_event.dtype), final
