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


def _cli_pipeline(kafka_bootstrap: str, tmp_path, monkeypatch) -> str:
    """A new pipeline with 4,000 events waiting and a model saved in ``tmp_path / "m"``; serve's address
    file goes under ``tmp_path / "home"``."""
    import torch

    from rnnstream.pipelines.sample_stream import resolve_schema, sample_events
    from rnnstream.rnn_core.config import ModelConfig
    from rnnstream.rnn_core.model import StreamingModel
    from rnnstream.rnn_core.serialization import save_model

    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path / "home"))
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    pipeline = new_pipeline("cli")
    schema = resolve_schema(pipeline)
    torch.manual_seed(0)
    save_model(StreamingModel(ModelConfig(features=schema.feature_spec(), hidden_size=8)), tmp_path / "m")
    create_topics(settings, pipeline, PARTITIONS)
    produce(settings, schema, sample_events(schema, 4000, 50), encoding="json")
    return pipeline


def _serve_argv(pipeline: str, kafka_bootstrap: str, tmp_path) -> list[str]:
    return [
        "serve", "--pipeline", pipeline, "--bootstrap-servers", kafka_bootstrap,
        "--model", str(tmp_path / "m"), "--workers", "1", "--checkpoint-uri", str(tmp_path / "ckpt"),
        "--duration", "300", "--status-every", "0.5",
    ]  # fmt: skip


def test_cli_serve_stops_cleanly_on_a_sigterm_while_it_starts(
    kafka_bootstrap, ray_local, tmp_path, monkeypatch, capsys
):
    """A SIGTERM that comes while serve starts its workers (a pod deleted then) stops it cleanly: exit 0,
    one status line, commits and final checkpoints, not the default SIGTERM death that leaves its workers
    running."""
    from rnnstream.cli.main import main

    pipeline = _cli_pipeline(kafka_bootstrap, tmp_path, monkeypatch)
    default_sigterm = signal.getsignal(signal.SIGTERM)
    sent: list[bool] = []

    def sigterm_once_handled() -> None:
        wait_for(lambda: signal.getsignal(signal.SIGTERM) is not default_sigterm, 120, "serve's handler")
        sent.append(not _ready(pipeline))  # (it may be ready already on a quick machine)
        os.kill(os.getpid(), signal.SIGTERM)

    early = threading.Thread(target=sigterm_once_handled)
    early.start()
    try:
        assert main(_serve_argv(pipeline, kafka_bootstrap, tmp_path)) == 0
    finally:
        early.join(timeout=600)
    out = capsys.readouterr().out
    print("SIGTERM before the coordinator was ready:", sent)
    assert sent and not _ready_or_gone(pipeline)
    assert "scored=" in out and "stopped; next offsets" in out, out
    assert not (tmp_path / "home" / "serving" / f"{pipeline}.json").exists()  # serve cleaned up after itself


def test_cli_serve_scale_status(kafka_bootstrap, ray_local, tmp_path, monkeypatch, capsys):
    """`rnnstream serve` runs with a live status line, `rnnstream scale` changes N while it runs,
    `rnnstream status` prints per-worker metrics, and the end of serve writes final checkpoints."""
    from rnnstream.cli.main import main
    from rnnstream.workers.partition_checkpoint import PartitionCheckpoints

    pipeline = _cli_pipeline(kafka_bootstrap, tmp_path, monkeypatch)
    ckpt = tmp_path / "ckpt"
    # serve runs on this (the main) thread, where it stops cleanly on SIGTERM; `scale` and `status` run
    # beside it once its coordinator is ready, then SIGTERM ends it. (A fixed --duration raced them: on a
    # loaded machine starting the second worker outlasted it and `status` found no coordinator.) The
    # --duration is only a cap should the calls beside it hang.
    default_sigterm = signal.getsignal(signal.SIGTERM)
    calls: dict[str, object] = {}

    def stops_on_sigterm() -> bool:  # serve's handler is in place (from before its coordinator starts)
        return signal.getsignal(signal.SIGTERM) is not default_sigterm

    def beside_serve() -> None:
        try:
            wait_for(lambda: stops_on_sigterm() and _ready(pipeline), 120, "serve's coordinator ready")
            calls["scale"] = main(["scale", "--pipeline", pipeline, "--workers", "2"])
            calls["status"] = main(["status", "--pipeline", pipeline])
        except BaseException as exc:  # reported by the asserts below
            calls["error"] = exc
        finally:
            if stops_on_sigterm():
                os.kill(os.getpid(), signal.SIGTERM)

    beside = threading.Thread(target=beside_serve)
    beside.start()
    try:
        serve_rc = main(_serve_argv(pipeline, kafka_bootstrap, tmp_path))
    finally:
        beside.join(timeout=600)
    assert calls == {"scale": 0, "status": 0}, calls
    out = capsys.readouterr().out
    assert serve_rc == 0
    assert "2 workers; partitions {0: [0, 2], 1: [1, 3]}" in out
    assert "scored=" in out and "restores" in out and "stopped; next offsets" in out
    ckpts = PartitionCheckpoints(str(ckpt), pipeline)
    assert all(ckpts.latest(p) is not None for p in range(PARTITIONS))


def _ready(pipeline: str) -> bool:
    """The pipeline's coordinator runs and has started its workers."""
    from rnnstream.workers.serving import find_coordinator

    try:
        coord = find_coordinator(pipeline)
    except ValueError:
        return False
    return bool(_ray.get(coord.status.remote(), timeout=60)["ready"])


def _ready_or_gone(pipeline: str) -> bool:
    try:
        return _ready(pipeline)
    except _ray.exceptions.RayActorError:  # killed between the lookup and the call
        return False
