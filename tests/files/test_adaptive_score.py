"""The forecast head's defaults follow a series through its changes: each change alarms, then settles.

Through the no-code path with its defaults (``fit-file`` on the first 15% of a generated series, then
``score-file`` on the whole series as one stream), as a user scoring a drifting metric would. The series
(a sine with noise) has a level shift, later a slow drift (a ramp of the same size over 300 events), and
later a change of variance (the noise 2.2x). Each change must alarm (the ``alert`` column, fit-file's
threshold: at most 1% of its own events, no labels) and then the new behaviour must become normal for
that key: each key normalizes its inputs with its own running level and scale (``adaptive_inputs``) and
scores its errors against its own error history (the adaptive ``score``), so neither a frozen input
scaling nor a frozen error scale keeps it alarming.

Seeds 0, 1 and 2 here (each ~3 s). Of seeds 0-7 at 68ea3da, six pass; two do not (of 0-19, 16 pass):

- seed 3 keeps alerting on 22% of the events from 1000 after the variance change (13, 14 and 7 on 9.9%,
  9.5% and 17%): the key's error history learns a lasting change at ``1 / long_window`` after
  ``max_frozen`` events, and each dip of the short mean below it ends the episode, so the next rise freezes
  it for another ``max_frozen`` (seed 3: frozen again at ~5000 and ~5500; the history's mean reaches the
  new error level at ~6200). Restarting the history after a lasting change fixes it (19 of 0-19 pass) but
  costs SMD's long labelled anomalies: measured and not kept, see
  :mod:`rnnstream.rnn_core.anomaly_likelihood`;
- seed 7 alerts on 10.0% of 1050-1500 (the limit is 8%): its noise has a real cluster there (events
  1375-1400: mean ``|noise|`` 1.55x the usual, a ~3.6 sigma 25-event mean; 1300-1400: 1.20x), which the
  10-event mean error at fit-file's 1% line flags as it should. Not the forecaster (its errors follow the
  noise, correlation 0.84-0.89, the same ratio to it before and after the training part); errors equal to
  the noise itself, scored the same way, alert on 6.7% there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnstream.cli.main import main

N = 7000
TRAIN = int(0.15 * N)
SHIFT, DRIFT, DRIFT_END, VARIANCE = 1500, 3000, 3300, 4500
SETTLE = 600  # events after a level change by which it must be normal again
# a change of variance is learned by the key's error history: at most 250 events not learned as an anomaly
# episode (anomaly_likelihood.max_frozen), then over its long window (500 events)
SETTLE_VARIANCE = 1000


def _series(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    y = np.sin(2 * np.pi * t / 50) + 0.3 * rng.normal(size=N)
    y[SHIFT:] += 4.0  # a level shift of ~13 noise standard deviations
    y[DRIFT:DRIFT_END] += np.linspace(0.0, 4.0, DRIFT_END - DRIFT)  # a slow drift: 0.013 an event
    y[DRIFT_END:] += 4.0
    y[VARIANCE:] += 0.6 * rng.normal(size=N - VARIANCE)  # noise sd 0.3 -> 0.67
    return pd.DataFrame({"series": f"s{seed}", "ts": t, "value": y})


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_level_shift_a_drift_and_a_variance_change_each_alarm_and_then_settle(
    tmp_path: Path, seed: int
) -> None:
    df = _series(seed=seed)
    df.iloc[:TRAIN].to_csv(tmp_path / "train.csv", index=False)
    df.to_csv(tmp_path / "all.csv", index=False)
    fit = ["fit-file", "--pipeline", "drift", "--input", str(tmp_path / "train.csv")]
    fit += ["--key-column", "series", "--time-column", "ts", "--value-columns", "value"]
    assert main([*fit, "--model-out", str(tmp_path / "model")]) == 0
    score = ["score-file", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "all.csv")]
    assert main([*score, "--output", str(tmp_path / "scores.csv")]) == 0
    out = pd.read_csv(tmp_path / "scores.csv")
    assert len(out) == N and {"score", "score_static", "anomaly_z", "alert"} <= set(out.columns)
    s, alert = out["score"].to_numpy(), out["alert"].to_numpy()
    assert ((s >= 0) & (s <= 1)).all()

    # each change alarms: a sustained stretch of alerts right after it
    for start, end in ((SHIFT, SHIFT + 100), (DRIFT, DRIFT_END), (VARIANCE, VARIANCE + 100)):
        assert alert[start:end].mean() >= 0.5 and _longest_run(alert[start:end]) >= 30, f"no alarm at {start}"
    # ... and nowhere else: before the first change and once each change has settled, at most sporadic
    # alerts (fit-file's threshold flags ~1% of its own events; later stretches are out of sample)
    normal = [
        (TRAIN, SHIFT),
        (SHIFT + SETTLE, DRIFT),
        (DRIFT_END + SETTLE, VARIANCE),
        (VARIANCE + SETTLE_VARIANCE, N),
    ]
    for start, end in normal:
        assert alert[start:end].mean() < 0.08, f"alerts at {start}-{end}: {alert[start:end].mean():.3f}"
        assert _longest_run(alert[start:end]) < 25, f"an alarm at {start}-{end} with no change"
        assert s[start:end].mean() < 0.6  # near 0.5: "as usual" for this key
    # the raw error of a key whose inputs follow it settles too (frozen scaling: ~1 after the shift)
    assert (out["score_static"].to_numpy()[SHIFT + SETTLE : DRIFT] > 0.99).mean() < 0.05
