"""Serve one pipeline live through the Ray workers and measure it: throughput, latency, recovery, scores.

The coordinator and its :class:`ScoringWorker` actors start on the events topic, which already holds the
training history: they catch up on it (the backlog gives the throughput, and warms every key's state the
way a deployed model meets traffic), then a held-out "live" stream is produced at a steady rate. Halfway
one worker process is killed with SIGKILL; the recovery time is from the kill until that worker is back
with its partitions (restored from their checkpoints) and scoring again. When everything is committed the
workers stop and the numbers are read back from the broker, not from the workers' word
(:mod:`rnnstream.demo.readback`): throughput, latency of the live events, and their committed scores.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rnnstream.demo.readback import read_back
from rnnstream.demo.status_monitor import StatusMonitor
from rnnstream.pipelines.spec import GeneratedStream, PipelineSpec
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.kafka_io import TopicAdmin
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig, committed_all

EVENTS_PER_MESSAGE = 250
TICK_S = 0.05


@dataclass
class ServingResult:
    """What serving one pipeline measured (see the module docstring)."""

    model_version: str
    workers: int
    partitions: int
    history_events: int
    live_events: int
    events_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    keys: int
    state_bytes: int
    recovery_s: float | None
    killed_slot: int | None
    kill_at_s: float | None
    dead_lettered: int
    duplicates: int
    missing: int
    live_outputs: np.ndarray  # [live events, K], NaN where no score was read back
    output_names: list[str]
    throughput: list[tuple[float, float]] = field(default_factory=list)  # (seconds, events/s)
    notes: list[str] = field(default_factory=list)


def worker_config(spec: PipelineSpec, kafka: KafkaSettings, checkpoint_uri: str) -> WorkerConfig:
    """The pipeline's serving defaults, with demo-sized checkpoints (every 2 s) so recovery replays little."""
    s = spec.serving
    return WorkerConfig(
        pipeline=spec.name,
        schema=spec.schema,
        kafka=kafka,
        checkpoint_uri=checkpoint_uri,
        max_batch_events=s.max_batch_events,
        batch_linger_ms=min(s.batch_linger_ms, 50),
        checkpoint_interval_events=min(s.checkpoint_interval_events, 20_000),
        checkpoint_interval_seconds=min(s.checkpoint_interval_seconds, 2.0),
        key_ttl_seconds=s.key_ttl_seconds,
        lag_every_s=0.5,
    )


def create_topics(kafka: KafkaSettings, config: WorkerConfig, partitions: int) -> None:
    with TopicAdmin(kafka) as admin:
        admin.create_topics(
            [config.events_topic, config.scores_topic, config.dlq_topic, config.shadow_topic], partitions
        )


def produce(
    kafka: KafkaSettings,
    spec: PipelineSpec,
    table: pa.Table,
    on_sent: Callable[[int], None] | None = None,
    rate_eps: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Send ``table`` as Arrow messages routed by key; at ``rate_eps`` events/s when given, else at once."""
    step = EVENTS_PER_MESSAGE * 8 if rate_eps is None else max(1, int(rate_eps * TICK_S))
    with EventProducer(kafka, spec.schema, events_per_message=EVENTS_PER_MESSAGE) as producer:
        started = time.monotonic()
        for i, start in enumerate(range(0, table.num_rows, step)):
            if stop is not None and stop.is_set():
                break
            chunk = table.slice(start, step)
            producer.send_arrow(chunk)
            if rate_eps is not None:
                producer.flush()
                wait = started + (i + 1) * TICK_S - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            if on_sent is not None:
                on_sent(chunk.num_rows)
        producer.flush()


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def serve_and_measure(
    spec: PipelineSpec,
    kafka: KafkaSettings,
    config: WorkerConfig,
    handle: ModelHandle,
    history: GeneratedStream,
    live: GeneratedStream,
    *,
    workers: int,
    partitions: int,
    live_seconds: float,
    kill_worker: bool,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
    say: Callable[[str], None] = print,
) -> ServingResult:
    """Serve the topic (history backlog, then the paced live stream with one kill); see module docstring."""
    from rnnstream.workers.serving import start_coordinator, stop_coordinator

    report = progress or (lambda stage, done, total: None)
    coordinator = start_coordinator(config, handle, workers, partitions)
    origin = time.monotonic()
    monitor = StatusMonitor(coordinator).start()
    notes: list[str] = []
    killed_slot = kill_at = recovery = None
    kill_wall_ms: int | None = None
    final: dict[str, Any] = {}
    try:
        wait_until(
            lambda: (
                _report_scored(monitor, report, "catching up", history.num_events)
                and committed_all(kafka, config)
            ),
            600,
            "the workers to catch up on the history",
        )
        rate = max(200.0, live.num_events / max(live_seconds, 1.0))
        half = live.num_events // 2
        sent = [0]

        def on_sent(n: int) -> None:
            sent[0] += n
            report("live", sent[0], live.num_events)

        produce(kafka, spec, live.table.slice(0, half), on_sent, rate_eps=rate)
        if kill_worker:
            # The first half is the steady-state latency window: let it finish before the kill.
            wait_until(lambda: committed_all(kafka, config), 600, "the first half of the live stream")
            killed_slot, pid, kill_wall_ms, kill_at, before = _kill_one(coordinator, monitor, seed)
            say(f"{spec.name}: killed scoring worker {killed_slot} (pid {pid}, SIGKILL) to measure recovery")
            kill_at -= origin
            stop = threading.Event()
            second = threading.Thread(
                target=produce,
                args=(kafka, spec, live.table.slice(half), on_sent),
                kwargs={"rate_eps": rate, "stop": stop},
                daemon=True,
            )
            second.start()
            try:
                recovery = _wait_recovered(monitor, killed_slot, before, origin + kill_at, notes)
            finally:
                second.join()
        else:
            produce(kafka, spec, live.table.slice(half), on_sent, rate_eps=rate)
        wait_until(lambda: committed_all(kafka, config), 600, "every live event to be scored and committed")
        final = monitor.status()
    finally:
        monitor.stop()
        stop_coordinator(coordinator)
    workers_final = [w for w in final.get("workers", []) if "error" not in w]
    readback = read_back(kafka, config, history, live, kill_wall_ms)
    return ServingResult(
        model_version=handle.version,
        workers=workers,
        partitions=partitions,
        history_events=history.num_events,
        live_events=live.num_events,
        events_per_s=readback.history_eps,
        latency_p50_ms=readback.p50_ms,
        latency_p99_ms=readback.p99_ms,
        latency_max_ms=readback.max_ms,
        keys=int(sum(w.get("keys", 0) for w in workers_final)),
        state_bytes=int(sum(w.get("state_bytes", 0) for w in workers_final)),
        recovery_s=recovery,
        killed_slot=killed_slot,
        kill_at_s=kill_at,
        dead_lettered=int(sum(w.get("dead_lettered", 0) for w in workers_final)),
        duplicates=readback.duplicates,
        missing=readback.missing,
        live_outputs=readback.outputs,
        output_names=readback.output_names,
        throughput=monitor.rates(origin),
        notes=notes + readback.notes,
    )


def _report_scored(
    monitor: StatusMonitor, report: Callable[[str, int, int], None], stage: str, total: int
) -> bool:
    if monitor.samples:
        report(stage, min(monitor.samples[-1][1], total), total)
    return True


def _kill_one(coordinator: Any, monitor: StatusMonitor, seed: int) -> tuple[int, int, int, float, int]:
    """SIGKILL one worker process (seeded choice): (slot, pid, wall ms, monotonic time, restarts before)."""
    import ray

    pids = ray.get(coordinator.worker_pids.remote(), timeout=60)
    slot = sorted(pids)[seed % len(pids)]
    st = monitor.status()
    before = next((int(w.get("restarts", 0)) for w in st["workers"] if w.get("slot") == slot), 0)
    wall_ms = int(time.time() * 1000)
    os.kill(pids[slot], signal.SIGKILL)
    return slot, pids[slot], wall_ms, time.monotonic(), before


def _wait_recovered(
    monitor: StatusMonitor, slot: int, restarts_before: int, killed_at: float, notes: list[str]
) -> float:
    """Seconds from the kill until the slot's new process owns its partitions again and has scored."""
    back_at = None
    deadline = killed_at + 120
    while time.monotonic() < deadline:
        try:
            st = monitor.status()
        except Exception:
            time.sleep(0.1)
            continue
        w = next((w for w in st["workers"] if w.get("slot") == slot), None)
        restarted = w is not None and "error" not in w and int(w.get("restarts", 0)) > restarts_before
        if restarted and sorted(w.get("partitions", [])) == sorted(w.get("assigned", [])):
            back_at = back_at or time.monotonic()
            # caught up: lag read for every partition it owns, all 0 (a new process shows lag_total 0 before
            # its first reading of them)
            read_all = set(w.get("lag", {})) == set(w.get("partitions", []))
            caught_up = read_all and int(w.get("lag_total", 1)) == 0
            if int(w.get("scored", 0)) > 0 or caught_up:
                return time.monotonic() - killed_at
        time.sleep(0.1)
    if back_at is not None:
        notes.append("the restarted worker owned its partitions again but had nothing left to score")
        return back_at - killed_at
    raise TimeoutError(f"worker {slot} did not come back within 120 s of the kill")
