"""The forecast head's score: a strictly increasing map of ``error_z`` into [0, 1) through stored quantiles
of training errors (:func:`calibrated_score`), and fitting those quantiles (:func:`fit_error_calibration`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

DEFAULT_CALIBRATION_POINTS = 101
UNCALIBRATED_MAX_Z = 4.0  # before fitting, the knots spread evenly over error_z 0..4
_TAIL_KNOT_FRACTION = 0.1  # the tails' scale = the spread of the outermost 10% of the knots


def calibrated_score(error_z: Tensor, knots: Tensor) -> Tensor:
    """Strictly increasing map of ``error_z`` into [0, 1) through ``knots`` (sorted training quantiles).

    With ``n`` knots, knot ``i`` scores its plotting position ``(i + 0.5) / n`` (about the fraction of
    training events with a lower ``error_z``), linear in between. Outside the knots the score keeps rising
    toward 1 (above) and falling toward 0 (below), each tail holding ``0.5 / n``:
    ``1 - (0.5 / n) / (1 + log1p((z - z_top) / tail_scale))`` above the top knot, the mirror image below the
    bottom one, with ``tail_scale`` the spread of the outermost 10% of the knots (their whole range, or 1,
    if those coincide). The logarithmic tail saturates so slowly that float32 still orders errors 1% apart
    up to ~1e6 times the top knot and 10% apart up to ``error_z`` ~1e30, so the strongest anomalies do not
    tie at 1 (only ``error_z = inf`` scores 1; NaN stays NaN).
    """
    return calibrated_score_with_tails(error_z, knots, calibration_tails(knots))


def calibration_tails(knots: Tensor) -> Tensor:
    """``[z_bottom, z_top, 1 / lower tail_scale, 1 / upper tail_scale]`` of :func:`calibrated_score`.

    Depends on the knots only: :class:`StreamingModel` keeps it in a buffer instead of recomputing it per
    ``step`` (no ``.item()``, so no GPU sync either way).
    """
    n = knots.shape[0]
    m = max(1, round((n - 1) * _TAIL_KNOT_FRACTION))
    ends = knots[[0, min(m, n - 1), max(n - 1 - m, 0), n - 1]]
    spreads = ends[1::2] - ends[0::2]  # (lower, upper)
    full_range = ends[3] - ends[0]
    eps = 1e-6
    scales = torch.where(spreads > eps, spreads, torch.where(full_range > eps, full_range, 1.0))
    return torch.cat([ends[[0, 3]], 1.0 / scales])


def calibrated_score_with_tails(error_z: Tensor, knots: Tensor, tails: Tensor) -> Tensor:
    n = knots.shape[0]
    z = error_z.contiguous()
    idx = torch.searchsorted(knots, z).clamp(1, n - 1)
    lo = knots[idx - 1]
    hi = knots[idx]
    frac = ((z - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    inside = (idx - 1 + frac + 0.5) / n  # clamps to the outermost knots' scores outside them
    # Tails: ``u`` = how far outside the knots, in tail scales (0 inside); the score moves away from the
    # outermost knot's score by ``tail_mass * L / (1 + L)``, L = log1p(u): up above the top knot, down below
    # the bottom one. Branch-free (no data-dependent control flow, no GPU sync).
    z_bottom, z_top, inv_lower, inv_upper = tails.unbind()
    above = (z - z_top) * inv_upper  # > 0 above the top knot, < 0 below the bottom one
    u = torch.maximum(above, (z_bottom - z) * inv_lower).clamp_min(0.0)
    tail_mass = 0.5 / n
    shift = tail_mass - tail_mass / (1.0 + torch.log1p(u))
    return torch.addcmul(inside, shift, above.sign())


def fit_error_calibration(
    errors: Tensor, num_points: int = DEFAULT_CALIBRATION_POINTS
) -> tuple[Tensor, Tensor, Tensor]:
    """``(per-column error scale, error_z knots, error_z moments)`` from normalized training errors
    ``[N, n]`` (float64): the scale is each column's RMS error; the knots are ``num_points`` quantiles of the
    events' ``error_z`` (RMS over columns of error / scale), made non-decreasing; the moments are
    ``[mean, variance]`` of those same ``error_z`` (not of the knots: the knots weigh the largest training
    error 1 / ``num_points``)."""
    if errors.shape[0] == 0:
        raise ValueError("fit_score_calibration needs at least one event")
    if num_points < 2:
        raise ValueError("num_points must be >= 2")
    scale = errors.square().mean(0).sqrt().clamp_min(1e-6)
    z = (errors / scale).square().mean(-1).sqrt().cpu().numpy()
    knots = np.maximum.accumulate(np.quantile(z, np.linspace(0.0, 1.0, num_points)))
    moments = np.array([z.mean(), z.var()])
    return scale, torch.as_tensor(knots, dtype=torch.float32), torch.as_tensor(moments, dtype=torch.float32)


def error_z_of(errors: Tensor, scale: Tensor) -> np.ndarray:
    """``error_z`` of normalized errors ``[N, n]``: the RMS over columns of error / scale (float64)."""
    return (errors.double() / scale.double()).square().mean(-1).sqrt().cpu().numpy()


def quiet_log_variance(
    runs: list[np.ndarray], mean: float, short_window: int, warmup: int, floor: float
) -> float:
    """The two-sided score's prior for how far its short mean of ``error_z`` strays in log scale: the mean
    square of ``log(short / mean)`` on training runs (each a key's events in order; both at least
    ``floor``). The short mean is formed as :mod:`~rnnstream.rnn_core.likelihood_recursion` forms it: after
    a key's ``warmup`` events, the plain mean of the first ``short_window``, then their exponentially
    weighted mean (weight ``1 / short_window``), counted once it is a full window's. NaN when no run is
    that long."""
    deviations = []
    log_mean = math.log(max(mean, floor))
    for z in runs:
        z = np.asarray(z, dtype=np.float64)[warmup:]
        if z.size <= short_window:
            continue
        short = np.empty_like(z)
        m = 0.0
        for i, e in enumerate(z):
            m += max(1.0 / (i + 1), 1.0 / short_window) * (e - m)
            short[i] = m
        deviations.append(np.log(np.maximum(short[short_window:], floor)) - log_mean)
    if not deviations:
        return math.nan
    return float(np.mean(np.square(np.concatenate(deviations))))


def refresh_score_tails(model: nn.Module, incompatible_keys: object = None) -> None:
    """Recompute the forecast head's cached :func:`calibration_tails` from its current ``score_knots``."""
    knots = getattr(model, "score_knots", None)
    if knots is not None:
        with torch.no_grad():
            model.score_tails = calibration_tails(knots).to(knots)
