"""The forecast head's fitted score buffers: the statistics of training errors that a
:class:`~rnnstream.rnn_core.model.StreamingModel` holds for its calibrated and adaptive anomaly score, how
they are registered, fitted on training events, and matched to a saved model before it loads.

The buffers (forecast heads only; all saved with the weights except ``score_tails``):

- ``error_scale`` ``[n]``: each continuous column's RMS forecast error (normalized units); ``error_z`` is the
  RMS over columns of error / scale;
- ``score_knots`` ``[num_points]``: quantiles of the training ``error_z``, the knots of the calibrated map
  (:func:`~rnnstream.rnn_core.score_calibration.calibrated_score`); the length is chosen at fit time;
- ``error_z_moments`` ``[2]``: ``[mean, variance]`` of the training ``error_z`` (the adaptive score's prior);
- ``error_z_quiet_var`` ``[1]``: the mean square of ``log(short mean / mean)`` of the training ``error_z``
  (the two-sided score's prior for a quiet stretch);
- ``score_tails`` ``[4]``: :func:`~rnnstream.rnn_core.score_calibration.calibration_tails` of the knots,
  derived, refreshed on fitting and on ``load_state_dict``.

Models saved before ``error_z_moments`` or ``error_z_quiet_var`` existed load with them NaN
(:func:`saved_score_buffers`) and score as they did when saved: the knots' own moments as the prior, and
one-sided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from rnnstream.rnn_core.anomaly_likelihood import QUIET_FLOOR
from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.score_calibration import (
    DEFAULT_CALIBRATION_POINTS,
    UNCALIBRATED_MAX_Z,
    calibration_tails,
    error_z_of,
    fit_error_calibration,
    quiet_log_variance,
    refresh_score_tails,
)

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel


def register_score_buffers(model: StreamingModel) -> None:
    """Register the unfitted score buffers on a forecast-head ``model`` (knots spread evenly over
    ``error_z`` 0..4, the moments and quiet variance NaN until fitted)."""
    model.register_buffer("error_scale", torch.ones(model.num_continuous))
    knots = torch.linspace(0.0, UNCALIBRATED_MAX_Z, DEFAULT_CALIBRATION_POINTS)
    model.register_buffer("score_knots", knots)
    model.register_buffer("error_z_moments", torch.full((2,), float("nan")))
    model.register_buffer("error_z_quiet_var", torch.full((1,), float("nan")))
    model.register_buffer("score_tails", calibration_tails(knots), persistent=False)
    model.register_load_state_dict_post_hook(refresh_score_tails)


@torch.no_grad()
def fit_score_buffers(
    model: StreamingModel,
    x: Tensor | np.ndarray | Sequence[np.ndarray],
    mask: Tensor | np.ndarray | None = None,
    state: Tensor | None = None,
    num_points: int = DEFAULT_CALIBRATION_POINTS,
) -> None:
    """Fit every score buffer of a forecast-head ``model`` on training events: see
    :meth:`~rnnstream.rnn_core.model.StreamingModel.fit_score_calibration`."""
    if model.head_kind != "forecast":
        raise ConfigError(f"score calibration is for forecast heads, this model has a {model.head_kind} head")
    was_training = model.training
    model.eval()
    try:
        errors = []
        device = model.norm_mean.device
        if isinstance(x, (list, tuple)):
            for seq in x:
                xt = torch.as_tensor(np.asarray(seq, dtype=np.float32), device=device).unsqueeze(0)
                errors.append(raw_forecast_errors(model, xt, None, None))
        else:
            xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
            m = None if mask is None else torch.as_tensor(np.asarray(mask), device=device).bool()
            errors.append(raw_forecast_errors(model, xt, m, state))
        scale, knots, moments = fit_error_calibration(torch.cat(errors).double(), num_points)
        model.error_scale.copy_(scale.to(model.error_scale))
        model.score_knots = knots.to(device)
        model.error_z_moments.copy_(moments.to(model.error_z_moments))
        runs = [error_z_of(err, scale) for err in errors]  # each key's events in order
        if not isinstance(x, (list, tuple)) and mask is None:  # a batch [B, T, D]: a run per row
            runs = list(runs[0].reshape(xt.shape[0], -1))
        w = model.windows
        quiet = quiet_log_variance(runs, float(moments[0]), w.short_window, w.warmup_events, QUIET_FLOOR)
        model.error_z_quiet_var.fill_(quiet)
        refresh_score_tails(model)
    finally:
        model.train(was_training)


def raw_forecast_errors(
    model: StreamingModel, x: Tensor, mask: Tensor | None, state: Tensor | None
) -> Tensor:
    """Normalized forecast errors ``[N, n]`` of valid events: actual - forecast from the state before."""
    with model._numerics(x):  # the errors that calibrate must be those that step will see
        _, top_before, _, inputs = model._run(x, state)
        actual = model._normalized(x) if inputs is None else inputs.normalized
        err = actual - model.head(top_before)
    if mask is not None:
        return err[mask]
    return err.reshape(-1, err.shape[-1])


def saved_score_buffers(
    model: StreamingModel, tensors: dict[str, Tensor], device: torch.device
) -> dict[str, Tensor]:
    """Ready a fresh ``model`` (on the tensors' ``device``) for ``load_state_dict(tensors, strict=True)``
    of a saved model: size ``score_knots`` to the saved table, and return ``tensors`` with the buffers that
    models saved before them lack filled in as NaN (so those models score as they did when saved)."""
    # The calibration table's length is chosen at fit time: size the buffer to what was saved.
    knots = tensors.get("score_knots")
    if knots is not None and hasattr(model, "score_knots"):
        model.score_knots = torch.empty_like(knots)
    if hasattr(model, "error_z_moments") and "error_z_moments" not in tensors:
        # Saved before the training error_z moments were stored: keep NaN, so the adaptive score's prior
        # stays the knots' mean and variance (as it was when the model was saved).
        tensors = {**tensors, "error_z_moments": model.error_z_moments.to(device)}
    if hasattr(model, "error_z_quiet_var") and "error_z_quiet_var" not in tensors:
        # Saved before the quiet side's training spread was stored: keep NaN, so it scores one-sided.
        tensors = {**tensors, "error_z_quiet_var": model.error_z_quiet_var.to(device)}
    return tensors
