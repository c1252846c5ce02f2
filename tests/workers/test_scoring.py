"""Scoring workers on the real embedded broker and a real local Ray: equivalence with the offline forward,
and bad input mixed into the stream (dead-lettered exactly, no worker restarts)."""

from __future__ import annotations

import json

import pytest

from rnnstream.workers.dead_letter import parse_dead_letter
from rnnstream.workers.score_verifier import read_topic
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

PARTITIONS = 4


def test_scores_equal_offline_forward(new_stream, ray_local, tmp_path):
    """20,000 events over 500 keys in 4 partitions through 2 workers: every score equals the offline forward
    over its key's sequence (abs tol 1e-5), each exactly once; final checkpoint states equal it too."""
    settings, _, schema, model, handle = new_stream("eq", PARTITIONS)
    produce(settings, schema, make_events(schema, 20_000, 500, seed=1), encoding="json")
    config = worker_config(settings, schema, tmp_path / "ckpt")
    coord = start_coordinator(config, handle, 2, PARTITIONS)
    try:
        wait_for(lambda: committed_all(settings, config), 120, "all events committed")
    finally:
        stop_coordinator(coord)
    verdict = run_verifier(settings, config, model, handle, PARTITIONS)
    assert verdict.expected == 20_000
    assert verdict.ok, verdict.line


def test_bad_input_is_dead_lettered_exactly(new_stream, ray_local, tmp_path):
    """Bad events mixed into a stream: each lands in the DLQ once with its reason; workers never restart."""
    from rnnstream.workers.event_producer import EventProducer

    settings, _, schema, model, handle = new_stream("bad", PARTITIONS)
    good = make_events(schema, 3000, 100, seed=2)
    bad_values = [
        b"not json at all",
        b'{"key": "k1", "time": 5}',  # missing fields
        json.dumps({"key": "k2", "time": 10, "amount": "x", "velocity": 1.0, "merchant": "fuel"}).encode(),
        json.dumps({"key": "", "time": 10, "amount": 1.0, "velocity": 1.0, "merchant": "fuel"}).encode(),
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
    ]
    n_bad = 0
    with EventProducer(settings, schema) as producer:
        for i in range(0, good.num_rows, 500):
            producer.send_json(good.slice(i, 500))
            for v in bad_values:
                producer.send_raw(v, key=b"bad-%d" % n_bad)
                n_bad += 1
        producer.flush()
    config = worker_config(settings, schema, tmp_path / "ckpt")
    coord = start_coordinator(config, handle, 2, PARTITIONS)
    try:
        wait_for(lambda: committed_all(settings, config), 120, "all events committed")
        status = answered_status(coord)
    finally:
        stop_coordinator(coord)
    assert sum(w["restarts"] for w in status["workers"]) == 0
    assert sum(w["kafka_errors"] for w in status["workers"]) == 0
    assert sum(w["dead_lettered"] for w in status["workers"]) == n_bad
    dead = [parse_dead_letter(m) for m in read_topic(settings, config.dlq_topic)]
    assert len(dead) == n_bad
    assert {d.reason for d in dead} >= {"not_json", "missing_field", "wrong_type", "empty_key", "not_object"}
    assert len({(d.source_partition, d.source_offset) for d in dead}) == n_bad
    verdict = run_verifier(settings, config, model, handle, PARTITIONS)
    assert verdict.expected == 3000
    assert verdict.ok, verdict.line


@pytest.fixture(autouse=True)
def _quiet_ray_logs(monkeypatch):
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
