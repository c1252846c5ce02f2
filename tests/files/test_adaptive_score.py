"""The forecast head's default score follows each series: a level shift alarms at the shift and then settles.

Through the no-code path with its defaults (``fit-file`` on the first 15% of a generated series, then
``score-file`` on the whole series as one stream), as a user scoring a drifting metric would. The static map
of the frozen forecaster's raw error (``score_static``) stays near 1 for the rest of the series after the
shift, which is why one threshold could not serve such a series; the adaptive ``score`` must not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rnnstream.cli.main import main

N = 4000
SHIFT = 1500
ALARM = 0.99


def _series(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    y = np.sin(2 * np.pi * t / 50) + 0.3 * rng.normal(size=N)
    y[SHIFT:] += 4.0  # a level shift of ~13 noise standard deviations
    return pd.DataFrame({"series": f"s{seed}", "ts": t, "value": y})


def test_a_level_shift_alarms_at_the_shift_and_then_settles(tmp_path: Path) -> None:
    df = _series(seed=0)
    df.iloc[: int(0.15 * N)].to_csv(tmp_path / "train.csv", index=False)
    df.to_csv(tmp_path / "all.csv", index=False)
    fit = [
        "fit-file",
        "--pipeline",
        "drift",
        "--input",
        str(tmp_path / "train.csv"),
        "--key-column",
        "series",
    ]
    fit += ["--time-column", "ts", "--value-columns", "value", "--model-out", str(tmp_path / "model")]
    assert main(fit) == 0
    score = ["score-file", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "all.csv")]
    assert main([*score, "--output", str(tmp_path / "scores.csv")]) == 0
    out = pd.read_csv(tmp_path / "scores.csv")
    assert len(out) == N and {"score", "score_static", "anomaly_z"} <= set(out.columns)
    s, static = out["score"].to_numpy(), out["score_static"].to_numpy()
    assert ((s >= 0) & (s <= 1)).all()
    before = s[int(0.15 * N) : SHIFT - 5]
    assert (before > ALARM).mean() < 0.005, "false alarms on the normal part"
    assert (s[SHIFT : SHIFT + 20] > ALARM).any(), "the level shift raised no alarm"
    settled = s[SHIFT + 400 :]
    assert (settled > ALARM).mean() < 0.005, "the new level never became normal"
    # the key's inputs follow its new level (adaptive_inputs), so even the raw-error map settles
    assert (static[SHIFT + 400 :] > ALARM).mean() < 0.05
    # the alert column: fit-file's threshold (at most 1% of its held-out events), no test labels involved
    alert = out["alert"].to_numpy()
    assert alert[SHIFT : SHIFT + 20].any()
    assert alert[int(0.15 * N) : SHIFT - 5].mean() < 0.03
    assert s[SHIFT + 1000 :].mean() < 0.6  # back near 0.5, "as usual" for this key (static: ~1)
