"""Where a scored event's time goes, as the worker itself reports it: the fetch latency (a message's create
time -> the loop polled it), each transaction commit and each checkpoint (both block the loop); and the
worker freezing its long-lived objects so that full garbage collections do not walk them (gc_pauses)."""

from __future__ import annotations

import gc
import time

from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.gc_pauses import freeze_long_lived
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.worker_config import committed_all
from rnnstream.workers.worker_metrics import WorkerMetrics
from tests.workers.worker_harness import make_events, wait_for, worker_config


def test_metrics_split_fetch_commit_and_checkpoint() -> None:
    m = WorkerMetrics("p", "worker-0", export=False)
    snap = m.snapshot()
    assert snap["latency_fetch_p99_ms"] is None and snap["commit_p99_ms"] is None
    assert snap["checkpoint_max_ms"] is None
    now_ms = time.time() * 1000
    m.polled([now_ms - 400.0, now_ms - 300.0])
    m.scores_committed(since=time.monotonic() - 0.25)  # a commit that began 250 ms ago
    m.checkpoint(12.5)
    m.checkpoint(40.0)
    snap = m.snapshot()
    assert 300.0 <= snap["latency_fetch_p50_ms"] <= snap["latency_fetch_p99_ms"]
    assert snap["commit_p50_ms"] >= 250.0
    assert snap["checkpoint_max_ms"] == 40.0
    m.reset_latencies()
    assert m.snapshot()["latency_fetch_p99_ms"] is None and m.snapshot()["commit_p99_ms"] is None


def test_freeze_keeps_collecting_new_garbage() -> None:
    try:
        assert freeze_long_lived() > 0 and gc.get_freeze_count() > 0

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze is still garbage the collector frees
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()


def test_worker_reports_its_split_and_freezes_what_it_loaded(new_stream, tmp_path) -> None:
    settings, _, schema, _, handle = new_stream("loop-timing", 2)
    with EventProducer(settings, schema) as producer:
        producer.send_arrow(make_events(schema, 600, 20, seed=5), events_per_message=100)
        producer.flush()
    config = worker_config(settings, schema, tmp_path / "ckpt")
    worker = ScoringWorker(0, config, export_metrics=False)
    try:
        worker.assign([0, 1], handle)
        frozen = gc.get_freeze_count()
        wait_for(lambda: committed_all(settings, config), 60, "all events committed")
        worker.final_checkpoint()
        snap = worker.metrics_snapshot()
    finally:
        worker.shutdown()
        gc.unfreeze()
    assert frozen > 0
    assert snap["scored"] == 600
    assert snap["latency_fetch_p99_ms"] is not None and snap["latency_fetch_p50_ms"] >= 0
    assert snap["commit_p99_ms"] is not None and snap["commit_p99_ms"] > 0
    assert snap["checkpoint_max_ms"] is not None and snap["checkpoint_max_ms"] > 0
