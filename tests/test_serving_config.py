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
