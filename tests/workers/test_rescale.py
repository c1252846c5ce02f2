"""Rescaling while the stream runs: 1 -> 2 -> 1 workers; partitions move with their final checkpoints and
the independent verifier finds every event scored exactly once and every key's final state exact."""

from __future__ import annotations

import os
import signal
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
    # serve runs on this (the main) thread, where it stops cleanly on SIGTERM; `scale` and `status` run
    # beside it once it serves (its SIGTERM handler is in place), then SIGTERM ends it. (A fixed --duration
    # raced them: on a loaded machine starting the second worker outlasted it and `status` found no
    # coordinator.) The --duration is only a cap should the calls beside it hang.
    default_sigterm = signal.getsignal(signal.SIGTERM)
    calls: dict[str, object] = {}

    def serving() -> bool:
        return signal.getsignal(signal.SIGTERM) is not default_sigterm

    def beside_serve() -> None:
        try:
            wait_for(serving, 120, "serve to be serving")
            calls["coordinator"] = _has_coordinator(pipeline)
            calls["scale"] = main(["scale", "--pipeline", pipeline, "--workers", "2"])
            calls["status"] = main(["status", "--pipeline", pipeline])
        except BaseException as exc:  # reported by the asserts below
            calls["error"] = exc
        finally:
            if serving():
                os.kill(os.getpid(), signal.SIGTERM)

    beside = threading.Thread(target=beside_serve)
    beside.start()
    try:
        serve_rc = main(
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
                "300",
                "--status-every",
                "0.5",
            ]
        )
    finally:
        beside.join(timeout=600)
    assert calls == {"coordinator": True, "scale": 0, "status": 0}, calls
    out = capsys.readouterr().out
    assert serve_rc == 0
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
