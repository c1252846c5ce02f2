"""Seeded univariate monitoring series that look like public real-world ones (cloud metrics, traffic,
volumes), with labelled anomaly points, for :mod:`univariate_drift`. Generated here: no real data is read.

Each series is 2,000-8,000 points at a fixed interval (1, 5 or 10 minutes), on a scale of its own (a CPU
share, a request rate, a byte count), and mixes what such data does that is *not* anomalous (daily and
weekly seasonality, noise of its own size, slow drift, integer counts, flat idle stretches, a level that
moves in steps) with labelled anomalies: spikes and dips, a level shift that then stays (labelled at the
shift only: the new level is normal afterwards), a variance change, a stuck sensor, a seasonal pattern that
goes missing, a burst of counts, a gradual ramp away from normal. No anomaly is placed in the first 20%
(the first 15% is the training part; NAB's probationary period).

:func:`generate` is deterministic in its seed; every kind appears about equally often.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DAY_MINUTES = 24 * 60
START = np.datetime64("2024-03-04T00:00:00", "s")
FIRST_ANOMALY_SHARE = 0.2


@dataclass(frozen=True)
class GeneratedSeries:
    name: str
    kind: str
    times: np.ndarray  # datetime64[s]
    values: np.ndarray  # float64 (integer-valued for count series)
    anomalies: tuple[int, ...]  # labelled anomaly points (indices)
    integer: bool = False


def _base(rng: np.random.Generator, n: int, step_min: int) -> tuple[np.ndarray, float, float]:
    """A daily (sometimes weekly) pattern of amplitude ~1 around 0, the level and the scale of the series."""
    t = np.arange(n) * step_min / DAY_MINUTES  # days
    phase = rng.uniform(0, 2 * np.pi)
    daily = np.sin(2 * np.pi * t + phase) + rng.uniform(0, 0.5) * np.sin(4 * np.pi * t + 2 * phase)
    weekly = rng.uniform(0, 0.4) * (((t.astype(int) % 7) >= 5) * -1.0)
    shape = daily * rng.choice([0.0, 0.3, 1.0, 1.0]) + weekly
    scale = float(10.0 ** rng.uniform(-2, 4))
    level = scale * rng.uniform(2.0, 10.0)
    return shape, level, scale


def _points(rng: np.random.Generator, n: int, k: int, gap: int = 200) -> list[int]:
    """``k`` anomaly points after the first 20%, at least ``gap`` apart (fewer if they do not fit)."""
    lo, hi = int(FIRST_ANOMALY_SHARE * n), n - 50
    chosen: list[int] = []
    for _ in range(50 * k):
        if len(chosen) == k:
            break
        p = int(rng.integers(lo, hi))
        if all(abs(p - c) >= gap for c in chosen):
            chosen.append(p)
    return sorted(chosen)


def _noise(rng: np.random.Generator, n: int, heavy: bool) -> np.ndarray:
    return rng.standard_t(3, n) / 1.7 if heavy else rng.standard_normal(n)


def spikes(rng, n, step):
    shape, level, scale = _base(rng, n, step)
    noise = rng.uniform(0.1, 0.5)
    x = level + scale * (shape + noise * _noise(rng, n, rng.random() < 0.5))
    pts = _points(rng, n, int(rng.integers(1, 4)))
    for p in pts:
        x[p : p + int(rng.integers(1, 4))] += scale * rng.choice([-1, 1]) * rng.uniform(3, 8)
    return x, pts


def level_shift(rng, n, step):
    shape, level, scale = _base(rng, n, step)
    x = level + scale * (shape + rng.uniform(0.1, 0.4) * rng.standard_normal(n))
    (p,) = _points(rng, n, 1)
    x[p:] += scale * rng.choice([-1, 1]) * rng.uniform(2, 5)  # then stays: the new normal
    return x, [p]


def drift_and_dip(rng, n, step):
    shape, level, scale = _base(rng, n, step)
    trend = scale * rng.uniform(1, 4) * np.linspace(0, 1, n) * rng.choice([-1, 1])
    x = level + trend + scale * (shape + rng.uniform(0.1, 0.3) * rng.standard_normal(n))
    (p,) = _points(rng, n, 1)
    w = int(rng.integers(5, 30))
    x[p : p + w] -= scale * rng.uniform(2, 4)
    return x, [p]


def variance_change(rng, n, step):
    shape, level, scale = _base(rng, n, step)
    sigma = np.full(n, rng.uniform(0.1, 0.3))
    (p,) = _points(rng, n, 1)
    sigma[p:] *= rng.uniform(4, 8)
    return level + scale * (shape + sigma * rng.standard_normal(n)), [p]


def counts_burst(rng, n, step):
    shape, _, _ = _base(rng, n, step)
    rate = rng.uniform(2, 60) * np.exp(0.5 * shape)
    pts = _points(rng, n, int(rng.integers(1, 3)))
    for p in pts:
        rate[p : p + int(rng.integers(3, 20))] *= rng.uniform(4, 10)
    return rng.poisson(rate).astype(np.float64), pts


def stuck_sensor(rng, n, step):
    shape, level, scale = _base(rng, n, step)
    x = level + scale * (shape + rng.uniform(0.2, 0.5) * rng.standard_normal(n))
    (p,) = _points(rng, n, 1)
    x[p : p + int(rng.integers(60, 200))] = x[p]
    return x, [p]


def idle_and_busy(rng, n, step):
    """Flat idle stretches (normal) between busy hours; the anomaly is load during idle hours."""
    shape, level, scale = _base(rng, n, step)
    busy = shape > 0.3
    x = np.where(busy, level + scale * rng.uniform(0.2, 0.5) * rng.standard_normal(n), level * 0.1)
    (p,) = _points(rng, n, 1)
    idle = np.flatnonzero(~busy[p:])
    if idle.size:
        p = p + int(idle[0])
        x[p : p + 12] = level + scale * rng.standard_normal(12) * 0.3
    return x, [p]


def pattern_loss(rng, n, step):
    """A strong daily cycle that stops for a while (the level stays in range: only the pattern says it)."""
    _, level, scale = _base(rng, n, step)
    t = np.arange(n) * step / DAY_MINUTES
    cycle = np.sin(2 * np.pi * t)
    x = level + scale * (2 * cycle + rng.uniform(0.1, 0.3) * rng.standard_normal(n))
    (p,) = _points(rng, n, 1)
    w = int(DAY_MINUTES / step * rng.uniform(0.3, 0.8))
    x[p : p + w] = level + scale * rng.uniform(0.1, 0.3) * rng.standard_normal(min(w, n - p))
    return x, [p]


def ramp(rng, n, step):
    """Steps between a few levels (normal, like disk or instance counts) and a gradual ramp away."""
    _, level, scale = _base(rng, n, step)
    steps = np.cumsum(rng.random(n) < 0.01)
    levels = rng.uniform(0, 3, steps[-1] + 1)
    x = level + scale * (levels[steps] + 0.05 * rng.standard_normal(n))
    (p,) = _points(rng, n, 1)
    w = int(rng.integers(50, 150))
    x[p : p + w] += scale * np.linspace(0, rng.uniform(4, 8), min(w, n - p))
    return x, [p]


def shift_and_settle(rng, n, step):
    """Random-walk-like usage (AR(1) around a slowly moving mean) with a step up at one labelled point."""
    _, level, scale = _base(rng, n, step)
    e = rng.standard_normal(n) * 0.2
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.95 * ar[i - 1] + e[i]
    (p,) = _points(rng, n, 1)
    x = level + scale * (ar + np.where(np.arange(n) >= p, rng.uniform(3, 6), 0.0))
    return x, [p]


KINDS: dict[str, Callable] = {
    f.__name__: f
    for f in (
        spikes,
        level_shift,
        drift_and_dip,
        variance_change,
        counts_burst,
        stuck_sensor,
        idle_and_busy,
        pattern_loss,
        ramp,
        shift_and_settle,
    )
}


def generate(count: int, seed: int = 0) -> list[GeneratedSeries]:
    """``count`` series, cycling through :data:`KINDS` with seeded lengths, intervals and scales."""
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        n = int(rng.integers(2_000, 8_001))
        step = int(rng.choice([1, 5, 5, 5, 10]))
        values, anomalies = KINDS[kind](rng, n, step)
        integer = kind == "counts_burst" or rng.random() < 0.15
        if integer:
            values = np.round(values)
        times = START + np.arange(n) * np.timedelta64(step * 60, "s")
        out.append(GeneratedSeries(f"{i:02d}_{kind}", kind, times, values, tuple(anomalies), integer=integer))
    return out
