"""The serve job's effective settings from the chart's own ConfigMap: one vocabulary, origins, precedence."""

from __future__ import annotations

from pathlib import Path

from rnnstream.pipelines.spec import get_pipeline
from rnnstream.run_config import load_run_config
from rnnstream.serving_config import effective_serving
from rnnstream.workers.worker_config import transactional_id

CHART_CONFIG = Path(__file__).parent / "data" / "chart_config.yaml"


def test_the_chart_config_builds_the_worker_config_with_origins():
    spec = get_pipeline("fraud")
    run = load_run_config(CHART_CONFIG, env={})
    eff = effective_serving(
        "fraud",
        spec.schema,
        run,
        flags={"deployment": "blue", "checkpoint_uri": "s3://elsewhere/ckpt", "bootstrap_servers": None},
        env={"MLFLOW_TRACKING_URI": "sqlite:///x.db"},
        default_checkpoint_uri="/tmp/local",
    )
    w = eff.worker
    assert (w.batch_linger_ms, w.max_batch_events, w.key_ttl_seconds) == (20, 4096, 86400)
    assert w.checkpoint_interval_events == 50000 and w.checkpoint_interval_seconds == 30
    assert (
        w.checkpoint_uri == "s3://elsewhere/ckpt" and eff.origins["checkpoint_uri"] == "flag --checkpoint-uri"
    )
    assert eff.origins["batch_linger_ms"] == f"file {CHART_CONFIG}"
    assert w.warmup_archive_events == 256 and eff.origins["warmup_archive_events"] == f"file {CHART_CONFIG}"
    # the chart's fixed port (a PodMonitor/ServiceMonitor can scrape it), not WorkerConfig's "any free port"
    assert w.metrics_port == 9464 and eff.origins["metrics_port"] == f"file {CHART_CONFIG}"
    assert w.max_record_bytes == 1_000_000 and eff.origins["max_record_bytes"] == f"file {CHART_CONFIG}"
    # a hot swap's challenger warms each key from the archive the chart's archive job writes
    assert w.warmup_archive_uri == run.archive.uri and run.archive.uri.startswith("s3://")
    assert w.kafka.bootstrap_servers == "kafka-bootstrap.kafka.svc:9092"
    assert (
        eff.tracking_uri == "sqlite:///x.db"
        and eff.origins["mlflow.tracking_uri"] == "env MLFLOW_TRACKING_URI"
    )
    # two releases on one Kafka: their groups and transactional ids differ
    assert w.group_id == "blue-fraud-scoring" and transactional_id(w, 0) == "blue-fraud-worker-0"
    plain = effective_serving(
        "fraud", spec.schema, load_run_config(None, env={}), default_checkpoint_uri="/c"
    )
    assert plain.worker.group_id == "rnnstream-fraud-scoring"
    assert plain.origins["max_batch_events"] == "pipeline fraud default"
    assert {row[0] for row in plain.rows()} >= {
        "max_batch_events",
        "kafka.bootstrap_servers",
        "mlflow.tracking_uri",
    }


def test_config_show_prints_every_setting_with_its_origin_and_masks_secrets(monkeypatch, capsys):
    import json

    from rnnstream.cli.main import main

    for name in ("MLFLOW_TRACKING_URI", "RNNSTREAM_CHECKPOINT_URI", "RNNSTREAM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RNNSTREAM_DEPLOYMENT_NAME", "blue")
    monkeypatch.setenv("RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD", "hunter2")
    argv = ["config", "show", "--config", str(CHART_CONFIG), "--checkpoint-uri", "s3://other/ckpt", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    rows = {r["setting"]: (r["value"], r["origin"]) for r in json.loads(out)}
    assert rows["checkpoint_uri"] == ("s3://other/ckpt", "flag --checkpoint-uri")
    assert rows["deployment"] == ("blue", "env RNNSTREAM_DEPLOYMENT_NAME")
    assert rows["batch_linger_ms"] == ("20", f"file {CHART_CONFIG}")
    assert rows["kafka.sasl_plain_password"] == ("*****", "env RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD")
    assert rows["mlflow.tracking_uri"] == ("http://rs-rnnstream-mlflow:5000", f"file {CHART_CONFIG}")
    assert rows["group_id"][0] == "blue-fraud-scoring"
    assert rows["transactions"] == ("True", "default")
    assert rows["warmup_archive_events"] == ("256", f"file {CHART_CONFIG}")
    assert rows["metrics_port"] == ("9464", f"file {CHART_CONFIG}")
    assert rows["max_record_bytes"] == ("1000000", f"file {CHART_CONFIG}")


def test_every_serving_setting_is_a_file_key_a_flag_and_a_worker_field(monkeypatch, capsys):
    """One name everywhere: each setting of the file's ``serving:`` section has a flag of the same name that
    wins over the file, and lands in the WorkerConfig field of that name."""
    import json
    from dataclasses import fields

    from rnnstream.cli.main import main
    from rnnstream.run_config import ServingSection
    from rnnstream.serving_config import SERVING_SETTINGS
    from rnnstream.workers.worker_config import WorkerConfig

    assert set(SERVING_SETTINGS) == {f.name for f in fields(ServingSection)} - {"checkpoint_uri"}
    assert set(SERVING_SETTINGS) <= {f.name for f in fields(WorkerConfig)}
    monkeypatch.delenv("RNNSTREAM_CONFIG", raising=False)
    given = {"max_batch_events": "77", "batch_linger_ms": "3", "key_ttl_seconds": "9.5",
             "commit_interval_ms": "40", "checkpoint_interval_events": "11",
             "checkpoint_interval_seconds": "2.5",
             "warmup_archive_events": "12", "metrics_port": "9600", "max_record_bytes": "500000"}  # fmt: skip
    assert set(given) == set(SERVING_SETTINGS)
    argv = ["config", "show", "--config", str(CHART_CONFIG), "--json"]
    for name, value in given.items():
        argv += [f"--{name.replace('_', '-')}", value]
    assert main(argv) == 0
    rows = {r["setting"]: (r["value"], r["origin"]) for r in json.loads(capsys.readouterr().out)}
    for name, value in given.items():
        assert rows[name] == (value, f"flag --{name.replace('_', '-')}"), name


def test_config_show_names_the_pipelines_when_it_cannot_choose(tmp_path, capsys):
    from rnnstream.cli.main import main

    two = tmp_path / "two.yaml"
    two.write_text("pipelines:\n  fraud: {partitions: 4, workers: 1}\n  video: {partitions: 4, workers: 1}\n")
    assert main(["config", "show", "--config", str(two)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rnnstream config: error: pass --pipeline (the config {two} lists: fraud, video)"]


def test_a_release_name_that_cannot_name_topics_and_groups_ends_in_one_line(monkeypatch, capsys):
    """A release name goes into topic names, group and transactional ids and actor names: a dotted or
    upper-case one is refused at the edge, naming where it came from."""
    from rnnstream.cli.main import main

    monkeypatch.delenv("RNNSTREAM_CONFIG", raising=False)
    monkeypatch.setenv("RNNSTREAM_DEPLOYMENT_NAME", "prod.eu")
    assert main(["config", "show", "--config", str(CHART_CONFIG)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'prod.eu' (env RNNSTREAM_DEPLOYMENT_NAME)" in line and "lowercase letters, digits and '-'" in line
    monkeypatch.delenv("RNNSTREAM_DEPLOYMENT_NAME")
    assert main(["config", "show", "--config", str(CHART_CONFIG), "--deployment-name", "Blue"]) == 2
    assert "'Blue' (flag --deployment-name)" in capsys.readouterr().err
    assert main(["config", "show", "--config", str(CHART_CONFIG), "--deployment-name", "blue-2"]) == 0
