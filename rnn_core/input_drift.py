"""Per-key input normalization that follows drift (forecast heads with an adaptive score).

Why: a forecaster whose inputs are normalized with statistics frozen at the end of training sees, after a
level shift, a slow drift or a change of variance, inputs it was never trained on; its errors then stay
large for the rest of the series and no score built on them settles. So each key normalizes its continuous
inputs with its *own* running level and scale, kept beside the recurrent state (checkpointed, restored, equal
offline and online like the rest of the state):

- ``count``: events seen (capped, exact in float32);
- per column ``level`` / ``var``: exponentially weighted mean and variance over the last ~``window`` events
  (a plain mean at first), starting from the training data's mean and variance as ``prior_events``
  pseudo-events, so a new key starts where the training data was. The scale (``sqrt(var)``) follows a key
  up, never below ``min_scale`` times the training data's: a key whose column hardly moves would otherwise
  have its smallest wiggle blown up into a large input (measured on ASD: best-F1 0.43 with a free scale,
  0.53 with this floor);
- updated robustly: a value further than ``clip_sigmas`` from the level counts as that far, so one spike
  does not blow up the scale; and such a value is not learned at all while its column has been that far
  for fewer than ``max_frozen`` events in a row (a per-column ``run`` counter): an anomalous stretch (a
  server metric's anomalies last ~100 events) keeps being measured against the level before it instead of
  becoming the new normal within a window, the same rule the error history follows
  (:class:`~rnnstream.rnn_core.anomaly_likelihood.LikelihoodWindows.max_frozen`). A change that lasts longer
  is then followed (the variance grows with every clipped deviation, which widens the clip), over about the
  window.

An event is normalized with the statistics *before* it (``(x - level) / sqrt(var)``): what the model sees
and what its forecast is compared with. The statistics *after* it turn the forecast of the next event back
into original units. A change alarms while the statistics have not caught up, and then the new level or
scale becomes normal for that key.

The recursion is one compiled loop (numba, no fastmath: the same float32 operations in the same order for
one event and for a whole sequence, so stepping equals the full sequence bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rnnstream.rnn_core.anomaly_likelihood import LikelihoodWindows
from rnnstream.rnn_core.compiled_loop import compiled

_MAX_COUNT = 1.0e6


@dataclass(frozen=True)
class DriftWindow:
    """How fast a key's input level and scale follow it (events), and the weight of the training prior."""

    window: int = 200
    prior_events: int = 20
    clip_sigmas: float = 5.0
    min_scale: float = 1.0  # a key's scale never falls below this share of the training data's
    max_frozen: int = LikelihoodWindows.max_frozen  # a column's outliers in a row not learned (see above)

    def __post_init__(self) -> None:
        if self.window < 2 or self.prior_events < 1 or self.clip_sigmas <= 0:
            raise ValueError("need window >= 2, prior_events >= 1 and clip_sigmas > 0")


def drift_stats_size(num_columns: int) -> int:
    """Values one key keeps: its count, and a level, a variance and an outlier run per continuous column."""
    return 1 + 3 * num_columns


def normalize_sequence(
    cont: Tensor, stats: Tensor, mean: Tensor, var: Tensor, window: DriftWindow
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Continuous inputs ``cont[B, T, n]`` of each key in order, from its ``stats[B, 1 + 3n]`` (count 0: a
    new key, starting from the training ``mean[n]`` / ``var[n]``) ->
    (normalized ``[B, T, n]`` with the statistics before each event, level and scale after each event
    ``[B, T, n]`` each, final stats ``[B, 1 + 3n]``). Data only: nothing here carries a gradient."""
    b, t, n = cont.shape
    if stats.shape != (b, drift_stats_size(n)):
        raise ValueError(f"stats must be [{b}, {drift_stats_size(n)}] for {n} columns: {list(stats.shape)}")
    device = cont.device
    x = np.ascontiguousarray(cont.detach().cpu().float().numpy())
    st = np.ascontiguousarray(stats.detach().cpu().float().numpy()).copy()
    m0 = mean.detach().cpu().float().numpy()
    v0 = var.detach().cpu().float().numpy()
    normalized = np.empty((b, t, n), np.float32)
    level = np.empty((b, t, n), np.float32)
    scale = np.empty((b, t, n), np.float32)
    _recursion(
        x,
        st,
        m0,
        v0,
        np.float32(window.window),
        np.float32(window.prior_events),
        np.float32(window.clip_sigmas),
        np.float32(window.min_scale**2),
        np.float32(window.max_frozen),
        normalized,
        level,
        scale,
    )

    def back(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(device)

    return back(normalized), back(level), back(scale), back(st)


def key_level_scale(stats: Tensor, mean: Tensor, var: Tensor, window: DriftWindow) -> tuple[Tensor, Tensor]:
    """Each key's current input (level ``[B, n]``, scale ``[B, n]``) from ``stats[B, 1 + 3n]`` (a new key:
    the training mean and standard deviation)."""
    n = mean.shape[0]
    fresh = stats[:, :1] <= 0
    level = torch.where(fresh, mean, stats[:, 1 : 1 + n])
    v = torch.where(fresh, var, stats[:, 1 + n : 1 + 2 * n])
    return level, torch.maximum(v, var * window.min_scale**2).sqrt()


def _recursion(  # pragma: no cover
    x, st, m0, v0, window, prior, clip, min_frac, max_frozen, normalized, level_out, scale_out
):
    b, t, n = x.shape
    one = np.float32(1.0)
    min_a = one / window
    max_count = np.float32(_MAX_COUNT)
    for k in range(b):
        count = st[k, 0]
        if count <= 0:
            for j in range(n):
                st[k, 1 + j] = m0[j]
                st[k, 1 + n + j] = v0[j]
                st[k, 1 + 2 * n + j] = 0.0
        for i in range(t):
            a = max(one / (count + one + prior), min_a)
            for j in range(n):
                lv = st[k, 1 + j]
                var = max(st[k, 1 + n + j], min_frac * v0[j])
                s = np.float32(np.sqrt(var))
                d = x[k, i, j] - lv
                normalized[k, i, j] = d / s
                spread = clip * s
                run = st[k, 1 + 2 * n + j] + one if abs(d) > spread else np.float32(0.0)
                st[k, 1 + 2 * n + j] = min(run, max_count)
                if run == 0 or run > max_frozen:  # an outlier is learned once its column has stayed out
                    d = min(max(d, -spread), spread)
                    lv = lv + a * d
                    var = (one - a) * (var + a * d * d)
                    st[k, 1 + j] = lv
                    st[k, 1 + n + j] = var
                level_out[k, i, j] = lv
                scale_out[k, i, j] = np.float32(np.sqrt(max(var, min_frac * v0[j])))
            count = min(count + one, max_count)
        st[k, 0] = count


_recursion = compiled()(_recursion)
