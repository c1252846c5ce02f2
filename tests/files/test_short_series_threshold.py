"""fit-file on one short monitoring series (a user's NAB-style file: ``timestamp,value`` at 5-minute steps,
one key): the stored alert threshold is not the 2nd-highest of ~100 held-out tail events.

A share of 1% of alerting events is only estimated from enough events (``MIN_EXCEEDANCES / target_fpr``):
with fewer held out, fit-file chooses it on every event after each key's warm-up, and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv

from rnnstream.cli.main import main
from rnnstream.files.alert_threshold import TARGET_FPR, TARGET_FPR_ALL_EVENTS
from rnnstream.files.columns import FileColumns
from rnnstream.files.fitting import FitOptions, fit_file
from rnnstream.files.holdout import MIN_PATIENCE_STEPS, WARMUP_EVENTS, patience_epochs, warmup_events
from rnnstream.rnn_core.training import KeySequences


def series_csv(path: Path, n: int, seed: int = 0) -> Path:
    """A daily cycle with noise at 5-minute steps, times as ``2024-03-04 00:05:00`` (no ``T``, no zone)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    value = 50.0 + 10.0 * np.sin(2 * np.pi * t / 288) + rng.normal(0.0, 1.0, n)
    times = pd.Timestamp("2024-03-04") + pd.to_timedelta(5 * t, unit="min")
    pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": value, "series": "cpu"}).to_csv(
        path, index=False
    )
    return path


def test_warmup_is_at_most_a_tenth_of_a_key() -> None:
    assert warmup_events(50) == 5
    assert warmup_events(10_000) == WARMUP_EVENTS


def test_early_stopping_waits_for_enough_optimizer_steps() -> None:
    """One key of 800 events is 13 steps an epoch (64-event chunks): 3 epochs would be 39 steps."""
    one = KeySequences(keys=("cpu",), x=(np.zeros((800, 2), np.float32),))
    assert patience_epochs(one, 3, chunk_len=64, batch_keys=32) == -(-MIN_PATIENCE_STEPS // 13) > 3
    many = KeySequences(
        keys=tuple(map(str, range(640))), x=tuple(np.zeros((640, 2), np.float32) for _ in range(640))
    )
    assert patience_epochs(many, 3, chunk_len=64, batch_keys=32) == 3  # 200 steps an epoch


def test_one_short_series_sets_its_threshold_on_every_warm_event(tmp_path: Path) -> None:
    n = 600  # 480 training events, 120 held out: far fewer than 1,000
    fitted = fit_file(
        series_csv(tmp_path / "cpu.csv", n),
        FileColumns(key="series", time="timestamp", values=("value",)),
        FitOptions(epochs=3, progress=False),
    )
    threshold = fitted.schema.threshold
    assert threshold is not None and threshold.rule == TARGET_FPR_ALL_EVENTS
    assert threshold.events == n - warmup_events(n)
    assert "each key's after its warm-up" in fitted.summary()


def test_enough_held_out_events_keep_the_held_out_rule(tmp_path: Path) -> None:
    n = 1_100  # 220 held out at the default 20%: enough for a 5% share (10 / 0.05 = 200)
    fitted = fit_file(
        series_csv(tmp_path / "cpu.csv", n),
        FileColumns(key="series", time="timestamp", values=("value",)),
        FitOptions(epochs=1, target_fpr=0.05, progress=False),
    )
    assert fitted.schema.threshold is not None and fitted.schema.threshold.rule == TARGET_FPR
    assert fitted.schema.threshold.events == n - int(0.8 * n)


def test_cli_alerts_on_few_normal_points_of_the_series_continued(tmp_path: Path) -> None:
    """Through the CLI as a user runs it: fit on the first 600 points, score 2,400 (the series goes on as
    it was). The stored threshold targets 1% of normal events: at most a few percent alert."""
    whole = series_csv(tmp_path / "cpu.csv", 2_400, seed=1)
    train = tmp_path / "cpu_train.csv"
    pd.read_csv(whole).head(600).to_csv(train, index=False)
    model = tmp_path / "model"
    fit = ["fit-file", "--input", str(train), "--key-column", "series", "--time-column", "timestamp"]
    assert main([*fit, "--value-columns", "value", "--model-out", str(model), "--no-progress"]) == 0
    out = tmp_path / "scores.csv"
    assert main(["score-file", "--model", str(model), "--input", str(whole), "--output", str(out)]) == 0
    alert = pacsv.read_csv(out).column("alert").to_numpy(zero_copy_only=False)[600:]
    assert alert.mean() <= 0.04
