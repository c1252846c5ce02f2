"""What each head of a :class:`~rnnstream.rnn_core.model.StreamingModel` outputs, from the top hidden state.

Heads and their output columns (:func:`output_names`):

- ``binary``: ``score`` = P(positive), from the state after the event;
- ``multiclass``: ``p_0 .. p_{C-1}``, from the state after the event;
- ``forecast``: the state *before* the event predicts its continuous values; ``error_z`` is the RMS over
  columns of the prediction error divided by a per-column scale fitted on training errors, ``score`` maps
  ``error_z`` into [0, 1) through stored quantiles of training ``error_z``: strictly increasing everywhere,
  so ranking by ``score`` equals ranking by ``error_z``, even far above the largest training error, down
  to float32 resolution (see :func:`~rnnstream.rnn_core.score_calibration.calibrated_score`). Before
  ``fit_score_calibration`` it is about ``error_z / 4`` up to 4, then a slow tail; ``forecast_0..`` = the
  next event's continuous values predicted from the state *after* the event (original units); with
  ``adaptive_likelihood`` the key's own anomaly likelihood becomes ``score`` (see :func:`adaptive_score`);
- ``next_token``: the state before the event gives a distribution over the first categorical column's codes;
  ``prob`` = probability of the code that came, ``rank`` = how many codes were more likely (0 = top-1),
  ``score`` = 1 - prob (float32 cannot tell apart tokens with ``prob`` below ~1e-7: their scores tie at or
  next to 1.0; rank by ``prob`` to separate those).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnstream.rnn_core.adaptive_state import KeyInputs, error_stats_columns, extra_row, with_extra_row
from rnnstream.rnn_core.anomaly_likelihood import NUM_STATS, likelihood_sequence, likelihood_step
from rnnstream.rnn_core.config import ModelConfig

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel


def head_width(config: ModelConfig) -> int:
    """Output width of the head's linear layer."""
    if config.head == "binary":
        return 1
    if config.head == "multiclass":
        return config.num_classes
    if config.head == "forecast":
        return config.features.num_continuous
    return config.features.cardinalities[0]


def output_names(config: ModelConfig) -> list[str]:
    """Names of the ``K`` output columns of ``forward``/``step``."""
    if config.head == "binary":
        return ["score"]
    if config.head == "multiclass":
        return [f"p_{i}" for i in range(config.num_classes)]
    if config.head == "forecast":
        adaptive = ["score_static", "anomaly_z"] if config.adaptive_likelihood else []
        n = config.features.num_continuous
        return ["score", "error_z", *(f"forecast_{i}" for i in range(n)), *adaptive]
    return ["score", "rank", "prob"]


def head_outputs(
    model: StreamingModel, x: Tensor, top_before: Tensor, top_after: Tensor, inputs: KeyInputs | None = None
) -> Tensor:
    """Head outputs ``[..., K]`` for events ``x[..., D]`` given the top hidden state before and after
    (forecast heads with ``inputs``: each key's own normalization, see :mod:`.input_drift`)."""
    kind = model.head_kind
    head = model.head
    if kind == "binary":  # F.linear: the same as head(...) without the module-call overhead
        return torch.sigmoid(F.linear(top_after, head.weight, head.bias))
    if kind == "multiclass":
        return torch.softmax(head(top_after), dim=-1)
    if kind == "forecast":
        if inputs is None:
            error_z = forecast_error_z(model, model._normalized(x), head(top_before))
            forecast = head(top_after) * model.norm_std + model.norm_mean
        else:
            error_z = forecast_error_z(model, inputs.normalized, head(top_before))
            forecast = head(top_after) * inputs.scale + inputs.level
        return torch.cat([model._calibrated(error_z).unsqueeze(-1), error_z.unsqueeze(-1), forecast], dim=-1)
    logits = head(top_before)
    token = model._codes(x)[..., :1]
    token_logit = logits.gather(-1, token)
    prob = logits.log_softmax(-1).gather(-1, token).exp()
    rank = (logits > token_logit).sum(-1, keepdim=True).to(prob.dtype)
    return torch.cat([1.0 - prob, rank, prob], dim=-1)


def forecast_error_z(model: StreamingModel, actual: Tensor, predicted: Tensor) -> Tensor:
    """RMS over columns of the normalized forecast error divided by the fitted per-column scale."""
    err = (actual - predicted) / model.error_scale
    return err.square().mean(-1).sqrt()


def adaptive_score(
    model: StreamingModel, out: Tensor, state: Tensor | None, full: Tensor
) -> tuple[Tensor, Tensor]:
    """Forecast outputs ``out[B, (T,) K0]`` -> with the key's own anomaly likelihood as ``score`` (the
    static map moves to ``score_static``, ``anomaly_z`` appended), and the new state ``full`` with the
    new error statistics in its statistics row (:mod:`.adaptive_state`).

    The statistics come from ``state`` (None: new keys) and follow every event in order,
    in :func:`likelihood_step` for a step and in :func:`likelihood_sequence` for whole sequences (so the
    two agree). While training they are left as they are (the loss does not use them).
    """
    b = out.shape[0]
    cols = error_stats_columns(model)
    stats = extra_row(model, state)[:, cols] if state is not None else out.new_zeros((b, NUM_STATS))
    static, error_z = out[..., 0], out[..., 1]
    if model.training:
        score, z, new_stats = static, torch.zeros_like(static), stats
    else:
        run = likelihood_sequence if out.dim() == 3 else likelihood_step
        score, z, new_stats = run(error_z, stats, training_error_prior(model), model.windows)
    out = torch.cat([score.unsqueeze(-1), out[..., 1:], static.unsqueeze(-1), z.unsqueeze(-1)], dim=-1)
    row = extra_row(model, full).clone()
    row[:, cols] = new_stats
    return out, with_extra_row(model, full, row)


def training_error_prior(model: StreamingModel) -> tuple[float, float, float]:
    """``(mean, variance, quiet variance)`` of the training ``error_z``: a new key's starting
    statistics in :func:`adaptive_score`. Models fitted before these were stored (``error_z_moments`` NaN)
    use the mean and variance of their calibration knots, as they did then; without the quiet side's
    training spread (``error_z_quiet_var`` NaN) the score is as it was before the quiet and spike sides."""
    mean, var = model.error_z_moments.tolist()
    if math.isnan(mean) or math.isnan(var):
        knots = model.score_knots
        mean, var = float(knots.mean()), float(knots.var())
    return mean, max(var, 1e-4), float(model.error_z_quiet_var)
