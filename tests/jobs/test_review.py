"""Model review: versions side by side (terminal + HTML), a backtest on one stream, and the models CLI.

Real MLflow on a sqlite store in a temp dir; no Ray here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

from rnnstream.cli.main import main as cli_main
from rnnstream.data_dir import DataDir
from rnnstream.jobs import review as model_review
from rnnstream.jobs import training_plots
from rnnstream.rnn_core.evaluation import replay
from rnnstream.workers import model_registry, tracking
from tests.workers.test_registry import SCHEMA, toy_events, trained_model


def _log(store: tracking.TrackingStore, hidden: int, pr_auc: float, with_plot: bool) -> str:
    table = toy_events(n_keys=6, per_key=12)
    model = trained_model(table, hidden=hidden)
    with tracking.training_run(store, SCHEMA.pipeline, f"h{hidden}"):
        mlflow.log_params({"model.hidden_size": hidden, "train.epochs": 1, "data.start": "2026-01-01"})
        mlflow.log_metrics({"eval.pr_auc": pr_auc, "baseline.pr_auc": 0.5})
        if with_plot:
            png = training_plots.pr_curve_png(
                np.array([0, 1, 1, 0]), {"m": np.array([0.1, 0.9, 0.4, 0.3])}, "t"
            )
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "pr_curve.png").write_bytes(png)
                mlflow.log_artifacts(tmp, artifact_path="plots")
        return model_registry.log_model_version(model, SCHEMA).version


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataDir:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path / "data"))
    return DataDir.default()


def test_review_shows_both_versions_and_cli_moves_aliases(
    data_dir: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tracking.resolve_store(data_dir)
    v1 = _log(store, hidden=8, pr_auc=0.7, with_plot=True)
    v2 = _log(store, hidden=12, pr_auc=0.8, with_plot=False)

    # Review reads through its own store, whatever MLflow's process-wide tracking URI says.
    mlflow.set_tracking_uri(f"sqlite:///{data_dir.root / 'elsewhere.db'}")
    try:
        review = model_review.review_versions(store, SCHEMA.pipeline)
    finally:
        mlflow.set_tracking_uri(store.uri)
    assert [r.version for r in review.versions] == [v1, v2]
    assert review.versions[1].baseline_gap() == pytest.approx({"pr_auc": 0.3})
    assert "model.hidden_size" in review.differing_params
    assert all(r.step_us_per_batch > 0 and r.num_parameters > 0 for r in review.versions)
    assert "pr_curve.png" in review.versions[0].plots

    table = toy_events(n_keys=5, per_key=8, seed=3)
    loaded = [model_registry.load_version(f"models:/rnnstream-toyreg/{v}", store=store) for v in (v1, v2)]
    bt = model_review.backtest(loaded, table, replay, lambda out, t: {"mean_score": float(out[:, 0].mean())})
    assert set(bt) == {v1, v2}
    assert bt[v1]["mean_score"] == pytest.approx(float(replay(loaded[0].model, table)[:, 0].mean()))

    assert cli_main(["models", "list", "--pipeline", SCHEMA.pipeline]) == 0
    assert cli_main(["models", "review", SCHEMA.pipeline, "--versions", f"{v1},{v2}"]) == 0
    out = capsys.readouterr().out
    assert "rnnstream-toyreg" in out and f"v{v1}" in out and f"v{v2}" in out and "gap pr_auc" in out
    page = data_dir.reports / f"review-{SCHEMA.pipeline}-v{v1}-v{v2}.html"
    assert page.is_file() and "data:image/png;base64" in page.read_text()

    assert cli_main(["models", "promote", SCHEMA.pipeline, v1]) == 0
    assert cli_main(["models", "promote", SCHEMA.pipeline, v2]) == 0
    assert model_registry.alias_version(store, SCHEMA.pipeline) == v2
    assert cli_main(["models", "rollback", SCHEMA.pipeline]) == 0
    assert model_registry.alias_version(store, SCHEMA.pipeline) == v1
    assert cli_main(["models", "rollback", SCHEMA.pipeline]) == 2
    assert "no earlier version" in capsys.readouterr().err
    assert cli_main(["models", "review", SCHEMA.pipeline, "--versions", "7"]) == 2
