"""The deployment config loader reads the chart's rendered ConfigMap and rejects bad files in one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from rnnstream.pipelines.spec import get_pipeline
from rnnstream.rnn_core.config import ConfigError
from rnnstream.run_config import (
    CONFIG_ENV,
    PipelineDeployment,
    RunConfig,
    ServingSection,
    load_run_config,
)
from rnnstream.workers.kafka_settings import KafkaSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "helm" / "rnnstream"
RENDERED_COPY = Path(__file__).resolve().parent / "data" / "chart_config.yaml"
NO_ENV: dict[str, str] = {}


def render_chart_config(values: Path | None = None) -> str:
    """``config.yaml`` of the chart's ConfigMap, rendered by helm (fails without helm, like tests/deploy)."""
    spec = importlib.util.spec_from_file_location("fetch_helm", REPO_ROOT / "scripts" / "fetch_helm.py")
    assert spec is not None and spec.loader is not None
    fetch_helm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_helm)
    try:
        helm = fetch_helm.ensure_helm()
    except fetch_helm.HelmUnavailableError as exc:
        pytest.fail(f"helm is needed to render the chart ({exc}); run scripts/fetch_helm.py")
    args = [
        str(helm),
        "template",
        "rs",
        str(CHART_DIR),
        "--namespace",
        "streams",
        "-s",
        "templates/configmap.yaml",
    ]
    if values is not None:
        args += ["-f", str(values)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["config.yaml"]


def test_rendered_copy_parses_into_typed_sections() -> None:
    config = load_run_config(RENDERED_COPY, env=NO_ENV)
    assert config.pipelines == {
        "fraud": PipelineDeployment("fraud", 12, 2, "champion", "models:/rnnstream-fraud@champion")
    }
    assert config.pipeline("fraud").model_uri == "models:/rnnstream-fraud@champion"
    assert config.serving == ServingSection(
        checkpoint_uri="s3://rnnstream-checkpoints/rnnstream",
        key_ttl_seconds=86_400,
        max_batch_events=4096,
        batch_linger_ms=20,
        commit_interval_ms=100,
        checkpoint_interval_events=50_000,
        checkpoint_interval_seconds=30.0,
        warmup_archive_events=256,
        metrics_port=9464,
        max_record_bytes=1_000_000,
    )
    fraud = get_pipeline("fraud").serving
    serving = config.serving.apply_to(fraud, partitions=config.pipeline("fraud").partitions)
    assert (serving.partitions, serving.max_batch_events, serving.key_ttl_seconds) == (12, 4096, 86_400)
    assert (serving.checkpoint_interval_events, serving.checkpoint_interval_seconds) == (50_000, 30.0)
    # Values a file leaves out keep the pipeline's own defaults.
    assert ServingSection(batch_linger_ms=5).apply_to(fraud) == replace(fraud, batch_linger_ms=5)
    assert config.archive.uri == "s3://rnnstream-archive/events"
    assert config.mlflow.tracking_uri == "http://rs-rnnstream-mlflow:5000"
    assert isinstance(config.kafka, KafkaSettings)
    assert config.kafka.bootstrap_servers == "kafka-bootstrap.kafka.svc:9092"
    assert config.kafka.security_protocol == "PLAINTEXT"
    with pytest.raises(ConfigError, match="pipeline 'video' is not under `pipelines`"):
        config.pipeline("video")


@pytest.mark.parametrize("profile", ["default", "sasl-kafka"])
def test_chart_renders_a_config_the_loader_accepts(profile: str, tmp_path: Path) -> None:
    values = None if profile == "default" else CHART_DIR / "ci" / f"{profile}-values.yaml"
    text = render_chart_config(values)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    # Pods get SASL credentials from a Secret as RNNSTREAM_KAFKA_* env; KafkaSettings.load adds them.
    env = {CONFIG_ENV: str(path), "RNNSTREAM_KAFKA_SASL_PLAIN_USERNAME": "rnnstream",
           "RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD": "s3cret"}  # fmt: skip
    config = load_run_config(env=env)
    assert config.source == str(path)
    assert config.kafka.sasl_plain_password == "s3cret" and "s3cret" not in repr(config)
    if profile == "default":
        assert yaml.safe_load(text) == yaml.safe_load(RENDERED_COPY.read_text()), (
            f"the chart's config.yaml changed: regenerate {RENDERED_COPY}"
        )
    else:
        assert config.kafka.security_protocol == "SASL_SSL"
        assert config.kafka.sasl_mechanism == "SCRAM-SHA-512"
        assert config.kafka.ssl_cafile == "/etc/rnnstream-kafka/ca.crt"
        kw = config.kafka.client_kwargs()
        assert kw["sasl_plain_username"] == "rnnstream" and kw["security_protocol"] == "SASL_SSL"


def test_json_file_env_variable_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pipelines": {"monitoring-logs": {"partitions": 4, "workers": 4}},
                                "kafka": {"bootstrap_servers": ["a:1", "b:2"]}}))  # fmt: skip
    config = load_run_config(env={CONFIG_ENV: str(path), "RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS": "env:9"})
    assert config.pipeline("monitoring_logs").model_uri == "models:/rnnstream-monitoring-logs@champion"
    assert config.kafka.bootstrap_servers == "env:9"  # the environment wins over the file
    assert config.serving == ServingSection() and config.archive.uri is None
    assert config.tracking_uri({"MLFLOW_TRACKING_URI": "http://x"}) == "http://x"
    assert load_run_config(path, env={}).kafka.bootstrap_servers == "a:1,b:2"
    # No file named anywhere: defaults (local development), Kafka still from the environment.
    bare = load_run_config(env={"RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert bare.pipelines == {} and bare.kafka.bootstrap_servers == "h:1"
    assert RunConfig.from_mapping(None).serving == ServingSection()


BAD_FILES: list[tuple[str, str]] = [
    ("pipeline: {}\n", "unknown key 'pipeline' (allowed: archive, kafka, mlflow, pipelines, serving)"),
    ("- a\n- b\n", "the config must be a mapping"),
    ("serving: {max_batch_events: many}\n", "serving.max_batch_events must be an integer, got 'many' (str)"),
    ("serving: {batch_linger_ms: true}\n", "serving.batch_linger_ms must be an integer, got True"),
    ("serving: {key_ttl_seconds: 0}\n", "serving.key_ttl_seconds must be >= 1"),
    ("serving: {checkpoint_interval_seconds: fast}\n", "checkpoint_interval_seconds must be a number"),
    ("serving: {ttl: 5}\n", "unknown key serving.'ttl'"),
    ("serving: [1]\n", "`serving` must be a mapping"),
    ("archive: {uri: 5}\n", "archive.uri must be a string, got 5 (int)"),
    ("mlflow: {uri: http://x}\n", "unknown key mlflow.'uri' (allowed: tracking_uri)"),
    ("kafka: {bootstrap_server: 'h:1'}\n", "unknown key kafka.'bootstrap_server'"),
    ("kafka: {security_protocol: SASL}\n", "kafka.security_protocol must be one of PLAINTEXT"),
    ("kafka: {request_timeout_ms: soon}\n", "kafka.request_timeout_ms must be an integer"),
    ("pipelines: {frod: {partitions: 2, workers: 1}}\n", "unknown pipeline 'frod' under `pipelines`"),
    ("pipelines: [fraud]\n", "`pipelines` must map a pipeline name to its settings"),
    ("pipelines: {fraud: {partitions: 2}}\n", "pipelines.fraud.workers is missing"),
    ("pipelines: {fraud: {partitions: '2', workers: 1}}\n", "pipelines.fraud.partitions must be an integer"),
    ("pipelines: {fraud: {partitions: 2, workers: 3}}\n", "3 workers for 2 partitions"),
    ("pipelines: {fraud: {partitions: 2, workers: 1, alias: x}}\n", "unknown key pipelines.fraud.'alias'"),
    ("serving: {max_batch_events: 1\n", "not valid YAML at line"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m.split(" ")[0] + str(i) for i, (_, m) in
                                                               enumerate(BAD_FILES)])  # fmt: skip
def test_bad_files_fail_with_one_clear_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path, env=NO_ENV)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist \(set --config or \$RNNSTREAM_CONFIG\)"):
        load_run_config(tmp_path / "nope.yaml", env=NO_ENV)
    bad_json = tmp_path / "c.json"
    bad_json.write_text("{'kafka': 1}")
    with pytest.raises(ConfigError, match="not valid JSON at line 1"):
        load_run_config(bad_json, env=NO_ENV)
