"""One reader for every settings file, and every command honours the sections of the run config that apply.

- the reader (``rnnstream.workers.config_document``) serves the run config, Kafka client files and
  ``train --config``: a file it cannot use is one ConfigError line naming the file, for all three;
- ``serve`` / ``config show``: ``pipelines.<p>`` gives the model and the workers (flags win), MLflow's login
  from the pod's environment is shown with its password masked;
- ``train``: the run config's ``archive.uri`` is where it looks for events and ``mlflow.tracking_uri``
  where it logs, when the command line does not say otherwise; its own ``--config`` is checked key by key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnstream.cli.main import main
from rnnstream.rnn_core.config import ConfigError
from rnnstream.workers.config_document import read_config_document, read_config_mapping
from rnnstream.workers.kafka_settings import KafkaSettings


@pytest.fixture(autouse=True)
def _no_deployment_env(monkeypatch):
    for name in (
        "RNNSTREAM_CONFIG",
        "MLFLOW_TRACKING_URI",
        "RNNSTREAM_KAFKA_CONFIG",
        "RNNSTREAM_DEPLOYMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "kafka: [1\n", "not valid YAML at line 2"),
        ("a.json", "{'kafka': 1}", "not valid JSON at line 1"),
        ("a.yaml", "- 1\n- 2\n", "must be a mapping"),
        ("a.yml", "1: x\n", "keys must be strings, got 1"),
    ],
)
def test_one_reader_says_one_line_for_every_kind_of_file(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        KafkaSettings.load(config_file=path, env={})  # a Kafka client file
    lines = [str(info.value)]
    for argv in (
        ["config", "show", "--config", str(path), "--pipeline", "fraud"],  # the run config
        ["train", "--pipeline", "fraud", "--config", str(path)],  # a training file
    ):
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        lines.append(line)
    for line in lines:
        assert message in line and str(path) in line, line


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist \(set --config\)"):
        read_config_document(tmp_path / "nope.yaml", missing_hint="set --config")
    assert read_config_mapping(_write(tmp_path / "empty.yaml", ""), "of settings") == {}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_serve_takes_model_and_workers_from_the_pipelines_section(tmp_path, capsys, monkeypatch):
    config = _write(
        tmp_path / "run.yaml",
        "pipelines:\n  fraud: {partitions: 6, workers: 3, model_uri: 'models:/rnnstream-fraud/4'}\n",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rnnstream-admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    assert main(["config", "show", "--config", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    rows = {r["setting"]: (r["value"], r["origin"]) for r in json.loads(out)}
    assert rows["model"] == ("models:/rnnstream-fraud/4", f"file {config} (pipelines.fraud)")
    assert rows["workers"] == ("3", f"file {config} (pipelines.fraud)")
    assert rows["mlflow.tracking_username"] == ("rnnstream-admin", "env MLFLOW_TRACKING_USERNAME")
    assert rows["mlflow.tracking_password"] == ("*****", "env MLFLOW_TRACKING_PASSWORD")
    assert "hunter2" not in out
    argv = ["config", "show", "--config", str(config), "--json", "--workers", "2", "--model", "/m"]
    assert main(argv) == 0
    rows = {r["setting"]: (r["value"], r["origin"]) for r in json.loads(capsys.readouterr().out)}
    assert rows["workers"] == ("2", "flag --workers") and rows["model"] == ("/m", "flag --model")


def _shown(capsys, argv: list[str]) -> dict[str, tuple[str, str]]:
    assert main(["config", "show", "--pipeline", "fraud", "--json", *argv]) == 0
    return {r["setting"]: (r["value"], r["origin"]) for r in json.loads(capsys.readouterr().out)}


def test_metrics_port_and_record_size_come_from_default_file_and_flag(tmp_path, capsys):
    """The worker's per-partition metrics port and its largest record: WorkerConfig's default, then the
    file's ``serving:`` keys, then ``--metrics-port`` / ``--max-record-bytes``; a value out of range is one
    line naming the file and the key."""
    empty = _write(tmp_path / "empty.yaml", "")
    rows = _shown(capsys, ["--config", str(empty)])
    assert rows["metrics_port"] == ("0", "default") and rows["max_record_bytes"] == ("1000000", "default")
    config = _write(tmp_path / "run.yaml", "serving: {metrics_port: 9500, max_record_bytes: 200000}\n")
    rows = _shown(capsys, ["--config", str(config)])
    assert rows["metrics_port"] == ("9500", f"file {config}")
    assert rows["max_record_bytes"] == ("200000", f"file {config}")
    rows = _shown(capsys, ["--config", str(config), "--metrics-port", "9600", "--max-record-bytes", "300000"])
    assert rows["metrics_port"] == ("9600", "flag --metrics-port")
    assert rows["max_record_bytes"] == ("300000", "flag --max-record-bytes")
    for bad in ("metrics_port: 70000", "max_record_bytes: 1000"):
        path = _write(tmp_path / "bad.yaml", f"serving: {{{bad}}}\n")
        assert main(["config", "show", "--pipeline", "fraud", "--config", str(path)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert str(path) in line and bad.split(":")[0] in line, line


def test_serve_without_a_model_anywhere_says_where_to_name_one(tmp_path, capsys):
    config = _write(tmp_path / "run.yaml", "serving: {batch_linger_ms: 5}\n")
    assert main(["serve", "--pipeline", "fraud", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rnnstream serve: error: pass --model, or list fraud under `pipelines` in the run config"


def test_train_looks_for_events_in_the_run_configs_archive(tmp_path, capsys, monkeypatch):
    archive = tmp_path / "deployed-archive"
    config = _write(tmp_path / "run.yaml", f"archive: {{uri: '{archive}'}}\nmlflow: {{tracking_uri: 'x'}}\n")
    monkeypatch.setenv("RNNSTREAM_CONFIG", str(config))
    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path / "home"))
    assert main(["train", "--pipeline", "fraud", "--no-register"]) == 2
    err = capsys.readouterr().err
    assert f"no archived fraud events under {archive}" in err


def test_train_config_is_checked_key_by_key(tmp_path, capsys):
    config = _write(tmp_path / "train.yaml", "training: {epoch: 3}\n")
    assert main(["train", "--pipeline", "fraud", "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"rnnstream train: error: {config}: unknown key training.'epoch' (allowed: ")
    assert "epochs" in line
    config.write_text("training: {holdout_fraction: 1.5}\nmodel: {hidden_size: 16}\n")
    assert main(["train", "--pipeline", "fraud", "--config", str(config)]) == 2
    assert "training.holdout_fraction must be < 1" in capsys.readouterr().err
