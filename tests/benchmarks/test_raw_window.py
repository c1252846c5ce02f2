"""The bare pass-through timed by ``benchmarks/release_window`` as rnnstream's workers are: started on an
empty topic, warmed with a message a partition, the backlog released in one transaction; it relays every
message (warm-up and backlog) to the same partition of its output topic, and its window is the backlog's."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_fixtures as e2e
import io_floor
import release_window


def test_raw_window_relays_the_released_backlog(kafka_settings) -> None:
    pipeline = f"rawwin-{uuid.uuid4().hex[:8]}"
    warm = [(p, b"w%d" % p, b'{"warm":%d}' % p, []) for p in range(e2e.PARTITIONS)]
    records = [(i % e2e.PARTITIONS, b"k%d" % i, b'{"i":%d}' % i, []) for i in range(203)]
    fetch = {"fetch_max_wait_ms": 5, "max_poll_records": 64}
    run = release_window.raw_window(kafka_settings, pipeline, warm, records, "r0", fetch)
    assert run.window_s > 0 and run.eps == len(records) / run.window_s
    assert run.eps_per_cpu_s > 0 and run.warm_s > 0 and run.notice_s >= 0
    out = io_floor.partition_counts(kafka_settings, f"{pipeline}.r0.raw", e2e.PARTITIONS)
    # every message relayed once, to its own partition: 1 warm-up + 51 or 50 backlog messages a partition
    assert out == {p: 1 + sum(1 for r in records if r[0] == p) for p in range(e2e.PARTITIONS)}
