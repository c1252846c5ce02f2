"""Rescaling while the stream runs: 1 -> 2 -> 1 workers; partitions move with their final checkpoints and
the independent verifier finds every event scored exactly once and every key's final state exact."""

from __future__ import annotations

import threading

import ray as _ray

from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.serving import start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    create_topics,
    make_events,
    new_pipeline,
    produce,
    produce_paced,
    run_verifier,
    scored_total,
    wait_for,
    worker_config,
)

PARTITIONS = 4


def test_rescale_1_2_1_exactly_once(new_stream, ray_local, tmp_path):
    settings, _, schema, model, handle = new_stream("rescale", PARTITIONS)
    events = make_events(schema, 15_000, 600, seed=5)
    config = worker_config(settings, schema, tmp_path / "ckpt")
    coord = start_coordinator(config, handle, 1, PARTITIONS)

    t = threading.Thread(target=produce_paced, args=(settings, schema, events, 500))
    t.start()
    try:
        wait_for(lambda: scored_total(coord) >= 2000, 60, "scoring under way")
        up = _ray.get(coord.scale.remote(2), timeout=120)
        assert up == {0: [0, 2], 1: [1, 3]}
        wait_for(lambda: scored_total(coord) >= 7000, 60, "scoring with 2 workers")
        down = _ray.get(coord.scale.remote(1), timeout=120)
        assert down == {0: [0, 1, 2, 3]}
        t.join()
        wait_for(lambda: committed_all(settings, config), 120, "all events committed")
    finally:
        t.join()
        stop_coordinator(coord)
    verdict = run_verifier(settings, config, model, handle, PARTITIONS)
    assert verdict.expected == 15_000
    assert verdict.ok, verdict.line


def test_cli_serve_scale_status(kafka_bootstrap, ray_local, tmp_path, monkeypatch, capsys):
    """`rnnstream serve` runs with a live status line, `rnnstream scale` changes N while it runs,
    `rnnstream status` prints per-worker metrics, and the end of serve writes final checkpoints."""
    import torch

    from rnnstream.cli.main import main
    from rnnstream.pipelines.sample_stream import resolve_schema, sample_events
    from rnnstream.rnn_core.config import ModelConfig
    from rnnstream.rnn_core.model import StreamingModel
    from rnnstream.rnn_core.serialization import save_model
    from rnnstream.workers.partition_checkpoint import PartitionCheckpoints

    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path / "home"))
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    pipeline = new_pipeline("cli")
    schema = resolve_schema(pipeline)
    torch.manual_seed(0)
    save_model(StreamingModel(ModelConfig(features=schema.feature_spec(), hidden_size=8)), tmp_path / "m")
    create_topics(settings, pipeline, PARTITIONS)
    produce(settings, schema, sample_events(schema, 4000, 50), encoding="json")
    ckpt = tmp_path / "ckpt"
    args = ["--pipeline", pipeline, "--bootstrap-servers", kafka_bootstrap]
    serve_rc: list[int] = []
    serve = threading.Thread(
        target=lambda: serve_rc.append(
            main(
                [
                    "serve",
                    *args,
                    "--model",
                    str(tmp_path / "m"),
                    "--workers",
                    "1",
                    "--checkpoint-uri",
                    str(ckpt),
                    "--duration",
                    "6",
                    "--status-every",
                    "0.5",
                ]
            )
        )
    )
    serve.start()
    try:
        address = tmp_path / "home" / "serving" / f"{pipeline}.json"
        wait_for(address.is_file, 60, "serve to start")
        wait_for(lambda: _has_coordinator(pipeline), 60, "the coordinator")
        assert main(["scale", "--pipeline", pipeline, "--workers", "2"]) == 0
        assert main(["status", "--pipeline", pipeline]) == 0
    finally:
        serve.join(timeout=120)
    out = capsys.readouterr().out
    assert serve_rc == [0]
    assert "2 workers; partitions {0: [0, 2], 1: [1, 3]}" in out
    assert "scored=" in out and "restores" in out and "stopped; next offsets" in out
    ckpts = PartitionCheckpoints(str(ckpt), pipeline)
    assert all(ckpts.latest(p) is not None for p in range(PARTITIONS))


def _has_coordinator(pipeline: str) -> bool:
    from rnnstream.workers.serving import find_coordinator

    try:
        find_coordinator(pipeline)
        return True
    except ValueError:
        return False
