"""The demo: a small end-to-end run (broker, Ray, Ray Train, MLflow, workers, a kill) and its second run,
which reuses the registered model; plus the pieces that need no services."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from rnnstream.cli.main import main
from rnnstream.demo.run import MS_PER_DAY, shift_into_past
from rnnstream.pipelines.spec import get_pipeline


def test_shift_into_past_keeps_time_of_day_and_order() -> None:
    stream = get_pipeline("fraud").generate(500, 10, seed=1)
    times = stream.times_ms()
    now = int(times.min()) + 5 * MS_PER_DAY  # the stream runs past "now"
    shifted = shift_into_past(stream, now_ms=now)
    moved = shifted.times_ms()
    assert moved.max() < now - MS_PER_DAY + 1
    delta = times - moved
    assert np.all(delta == delta[0]) and delta[0] % MS_PER_DAY == 0
    assert shifted.table.column("key").equals(stream.table.column("key"))
    assert shift_into_past(shifted, now_ms=now) is shifted  # already in the past: unchanged


def test_unknown_pipeline_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--pipeline", "weather"]) == 2
    assert "unknown pipeline(s) ['weather']" in capsys.readouterr().err


def _broker_pids(home: Path) -> list[int]:
    return [int(p) for p in re.findall(r"pid (\d+)\)", (home / "out.txt").read_text())]


def test_demo_end_to_end_then_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--pipeline", "fraud", "--events", "3000", "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    first = capsys.readouterr().out
    (tmp_path / "out.txt").write_text(first)
    assert re.search(r"^fraud\s+pr_auc\s+\d\.\d{3}\s+\d\.\d{3}\s+[\d,]+\s+\d+\s+\d+\s+\d+", first, re.M), (
        first
    )
    assert "killed scoring worker" in first
    report = Path(re.search(r"report: (\S+)", first).group(1))
    page = report.read_text()
    for plot in ("scores_over_time", "pr_curve", "confusion_matrix", "throughput"):
        assert f"fraud-{plot}.png" in page and (report.parent / f"fraud-{plot}.png").stat().st_size > 1000
    assert "max |difference|" in page
    assert "rnnstream mlflow ui" in first
    assert not ray.is_initialized()
    for pid in _broker_pids(tmp_path):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the broker the demo started is gone

    assert main([*args, "--no-kill"]) == 0
    second = capsys.readouterr().out
    assert "reusing registered rnnstream-fraud version 1" in second
    assert "training fraud-" not in second
