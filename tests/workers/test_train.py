"""``rnnstream train`` end to end: Ray Train DDP on 2 CPU workers trains, resumes from its checkpoint on
purpose, evaluates through the streaming path against the stateless baseline, logs to MLflow and registers.

Real Ray (one local instance for the module, no dashboard) and real MLflow (sqlite in a temp dir). Each
Ray Train ``fit()`` costs ~15-30 s of fixed start-up here, so the module runs exactly two.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from rnnstream.cli.main import main as cli_main
from rnnstream.data_dir import DataDir
from rnnstream.workers import model_registry, tracking

EVENTS = "4000"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("train-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNSTREAM_HOME", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root


@pytest.fixture(scope="module")
def trained(ray_local: None, home: Path) -> dict[str, str]:
    """Two CLI runs: a fresh 2-epoch run on 2 workers, then ``--resume`` of that run up to 3 epochs."""
    config = home / "train.yaml"
    config.write_text("model:\n  hidden_size: 16\ntraining:\n  batch_keys: 8\n  chunk_len: 16\n")
    common = ["train", "--pipeline", "fraud", "--generate", EVENTS, "--workers", "2", "--config", str(config)]
    assert cli_main([*common, "--epochs", "2"]) == 0
    assert cli_main([*common, "--epochs", "3", "--resume", "--no-baseline"]) == 0
    store = tracking.resolve_store(DataDir(home))
    versions = model_registry.list_versions(store, "fraud")
    assert [v.version for v in versions] == ["1", "2"]
    return {"first": versions[0].run_id, "resumed": versions[1].run_id}


def _losses(run_id: str) -> list[float]:
    client = tracking.resolve_store().client()
    return [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]


def test_ddp_on_two_workers_trains_evaluates_and_registers(trained: dict[str, str], home: Path) -> None:
    store = tracking.resolve_store()
    run = store.client().get_run(trained["first"])
    params, metrics = run.data.params, run.data.metrics
    assert params["train.workers"] == "2" and params["model.hidden_size"] == "16"
    losses = _losses(trained["first"])
    assert len(losses) == 2 and losses[1] < losses[0]
    # evaluation through the streaming path, with the stateless baseline's metrics beside it
    assert 0.0 <= metrics["eval.pr_auc"] <= 1.0 and 0.0 <= metrics["baseline.pr_auc"] <= 1.0
    assert int(params["data.train_rows"]) + int(params["data.val_rows"]) == int(EVENTS)
    assert params["data.start"] < params["data.split"] <= params["data.end"]
    assert run.data.tags["mlflow.source.git.commit"]
    artifacts = {a.path for a in store.client().list_artifacts(trained["first"], "plots")}
    assert {"plots/pr_curve.png", "plots/confusion_matrix.png"} <= artifacts
    model, version = model_registry.load_model_version("models:/rnnstream-fraud/1", store=store)
    assert version == "1" and model.config.hidden_size == 16


def test_resume_continues_the_same_run_from_its_checkpoint(trained: dict[str, str]) -> None:
    client = tracking.resolve_store().client()
    first = client.get_run(trained["first"]).data.params
    resumed = client.get_run(trained["resumed"]).data.params
    assert resumed["ray.run_name"] == first["ray.run_name"]
    assert resumed["train.resumed_at_epoch"] == "2"
    before, after = _losses(trained["first"]), _losses(trained["resumed"])
    assert len(after) == 3
    assert after[:2] == pytest.approx(before)  # epochs 0-1 came from the checkpoint, not retrained


def test_review_backtests_both_versions(trained: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "review", "fraud", "--backtest", "1500"]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out and "backtest pr_auc" in out


def test_missing_archive_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNSTREAM_HOME", str(tmp_path))
        assert cli_main(["train", "--pipeline", "fraud", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--generate" in err and "archive" in err


def test_archive_events_load_in_event_time_order(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnnstream.jobs.training_data import generate_events, load_events
    from rnnstream.pipelines.spec import get_pipeline

    spec = get_pipeline("fraud")
    table = generate_events(spec, 600, seed=1).table
    n = table.num_rows
    for date, rows in (("2026-01-01", np.arange(0, n, 2)), ("2026-01-02", np.arange(1, n, 2))):
        part = table.take(pa.array(rows))
        part = part.append_column("kafka_partition", pa.array(np.zeros(len(rows), dtype=np.int32)))
        part = part.append_column("kafka_offset", pa.array(rows.astype(np.int64)))
        part = part.append_column("kafka_event_index", pa.array(np.zeros(len(rows), dtype=np.int32)))
        folder = tmp_path / "archive" / "pipeline=fraud" / f"date={date}"
        folder.mkdir(parents=True)
        pq.write_table(part, folder / f"p0000-o{rows[0]}-{rows[-1]}.parquet")
    other = tmp_path / "archive" / "pipeline=video" / "date=2026-01-01"
    other.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["x"]}), other / "p0000-o0-0.parquet")

    loaded = load_events(spec, tmp_path / "archive")
    assert loaded.schema.names == spec.schema.arrow_schema().names
    assert loaded.num_rows == n
    times = loaded.column("time").cast(pa.int64()).to_numpy()
    assert bool(np.all(np.diff(times) >= 0))
    assert loaded.column("label").to_pylist() == table.column("label").to_pylist()


@pytest.mark.parametrize("as_uri", [False, True])
def test_train_storage_stages_events_and_remembers_runs(tmp_path: Path, as_uri: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnnstream.workers.train_loop import TrainStorage

    storage = TrainStorage(tmp_path.as_uri() if as_uri else str(tmp_path))
    assert storage.latest("fraud") is None and not storage.run_exists("r1")
    storage.remember("fraud", "r1")
    assert storage.latest("fraud") == "r1"
    staged = storage.stage("r1", {"train": pa.table({"key": ["a", "b"]})})
    assert pq.read_table(staged["train"]).num_rows == 2
    (tmp_path / "r1").mkdir()
    assert storage.run_exists("r1")
    storage.unstage("r1")
    assert not (tmp_path / "datasets" / "r1").exists()
