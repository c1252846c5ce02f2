"""Overload: the producer outruns the worker for a while. The worker's memory stays bounded (bounded poll
and fetch sizes, at most ``max_in_flight`` uncommitted scores, partitions paused while it commits), the lag
grows instead, and it drains once the burst is over; every event is still scored exactly once."""

from __future__ import annotations

import threading
import time

import psutil
import ray as _ray

from rnnstream.workers.serving import start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    answered_status,
    make_events,
    produce,
    run_verifier,
    wait_for,
    worker_config,
)

PARTITIONS = 2
EVENTS = 60_000
WARMUP = 1_000


def test_overload_memory_bounded_and_lag_drains(new_stream, ray_local, tmp_path):
    # A wide model (GRU 512) so that scoring, not sending, is the slower side: a GRU-64 worker now scores JSON
    # about as fast as one kafka-python producer sends it, and would never fall behind.
    settings, _, schema, model, handle = new_stream("overload", PARTITIONS, hidden=512)
    events = make_events(schema, EVENTS, 5000, seed=6)
    config = worker_config(
        settings,
        schema,
        tmp_path / "ckpt",
        max_batch_events=256,
        max_poll_records=256,
        max_in_flight=1000,
        fetch_max_bytes=256 * 1024,
        max_partition_fetch_bytes=128 * 1024,
        lag_every_s=0.2,
    )
    coord = start_coordinator(config, handle, 1, PARTITIONS)
    pid = _ray.get(coord.worker_pids.remote())[0]
    proc = psutil.Process(pid)
    # The one-time start (the model's first step, the state store's compiled kernels) is not overload:
    # measure growth from a worker that has already scored a first slice.
    produce(settings, schema, events.slice(0, WARMUP), encoding="json")
    wait_for(lambda: committed_all(settings, config), 120, "the warm-up slice to be scored")
    rss_start = proc.memory_info().rss
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            st = _ray.get(coord.status.remote(), timeout=30)["workers"][0]
            samples.append((proc.memory_info().rss, int(st.get("lag_total", 0))))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        t0 = time.monotonic()
        produce(settings, schema, events.slice(WARMUP), encoding="json")  # as fast as kafka-python sends
        burst_s = time.monotonic() - t0
        wait_for(lambda: committed_all(settings, config), 180, "the lag to drain")

        # the lag watcher reads the broker on its own cadence: wait for it to report the drained lag
        def worker_status() -> dict:
            return _ray.get(coord.status.remote(), timeout=30)["workers"][0]

        wait_for(lambda: worker_status().get("lag_total") == 0, 60, "the reported lag to reach 0")
        status = answered_status(coord)["workers"][0]
    finally:
        done.set()
        sampler.join()
        stop_coordinator(coord)
    peak_rss = max(r for r, _ in samples)
    peak_lag = max(lag for _, lag in samples)
    growth_mb = (peak_rss - rss_start) / 1e6
    print(
        f"burst {EVENTS - WARMUP} events in {burst_s:.1f} s; peak lag {peak_lag}; "
        f"worker RSS {rss_start / 1e6:.0f} MB -> "
        f"peak {peak_rss / 1e6:.0f} MB (+{growth_mb:.0f} MB); pauses {status['pauses']}"
    )
    assert peak_lag >= EVENTS // 4, "the producer should have outrun the worker"
    assert status["lag_total"] == 0
    assert status["pauses"] > 0
    assert growth_mb < 120, f"worker memory grew by {growth_mb:.0f} MB under overload"
    verdict = run_verifier(settings, config, model, handle, PARTITIONS)
    assert verdict.ok, verdict.line
