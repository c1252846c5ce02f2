"""Exactly-once through failures, checked by the independent verifier (modelled on Kafka Streams'
``streams_eos_test.py``): kill -9 of worker processes at random points, and a broker restart mid-stream."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import ray as _ray

from rnnstream.workers.dead_letter import parse_dead_letter
from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.score_verifier import read_topic
from rnnstream.workers.serving import start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.rnn_core.failing_model import POISON
from tests.workers.worker_harness import (
    answered_status,
    make_events,
    produce,
    produce_paced,
    run_verifier,
    scored_total,
    scoring_stream,
    wait_for,
    worker_config,
)

PARTITIONS = 4


def _all_assigned(coord) -> bool:
    st = _ray.get(coord.status.remote(), timeout=30)
    return all(w.get("partitions") == w.get("assigned") for w in st["workers"])


def _bad_messages(n_keys: int, start_ms: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of bad JSON messages: malformed, NaN, float32 overflow, oversize, and valid events that
    make the model raise (each kind several times, spread over keys and so over partitions)."""
    out = []
    for i in range(6):
        key = f"k{(i * 337) % n_keys:05d}".encode()
        t = start_ms + 1000 * i
        ev = {"key": key.decode(), "time": t, "amount": 1.0, "velocity": 0.5, "merchant": "fuel"}
        out += [
            (key, b'{"key": "' + key + b'", "time": '),
            (key, json.dumps({**ev, "amount": float("nan")}).encode()),
            (key, json.dumps({**ev, "amount": 1e39}).encode()),
            (key, json.dumps({**ev, "pad": "x" * 300_000}).encode()),
            (key, json.dumps({**ev, "amount": POISON}).encode()),
        ]
    return out


def test_kill_9_with_ttl_and_bad_input_exactly_once(new_stream, ray_local, tmp_path):
    """The worker chaos test: a 50,000-event stream (Arrow messages of 100 events, bad JSON messages mixed
    in), keys expiring by event-time TTL, a model that raises on some events, and a worker process SIGKILLed
    3 times at seeded random points. No event is lost or scored twice (read_committed), bad ones are
    dead-lettered once each (events in == scored + dead-lettered), and every final state equals the offline
    reference computed by StreamScorer alone with the same TTL."""
    import cloudpickle

    import tests.rnn_core.failing_model as failing_model

    cloudpickle.register_pickle_by_value(failing_model)  # the workers load the model through it
    settings, _, schema, model, handle = new_stream("kill", PARTITIONS)
    events = make_events(schema, 50_000, 2000, seed=3)  # ~25 events a key, ~20 s apart on average
    start_ms = int(events.column("time").cast("int64")[0].as_py())
    config = worker_config(
        settings, schema, tmp_path / "ckpt", checkpoint_interval_events=3000, key_ttl_seconds=30.0
    )
    coord = start_coordinator(config, handle, 2, PARTITIONS, model_loader=failing_model.load_failing)
    rng = random.Random(3)  # kills slots 0, 1, 0
    chunks = [events.slice(i, 2500) for i in range(0, events.num_rows, 2500)]
    bad = _bad_messages(2000, start_ms)

    def producer() -> None:
        with EventProducer(settings, schema) as raw:
            for i, c in enumerate(chunks):
                produce(settings, schema, c, encoding="arrow", per_msg=100)
                for key, value in bad[i :: len(chunks)]:
                    raw.send_raw(value, key=key)
                raw.flush()
                time.sleep(0.5)

    t = threading.Thread(target=producer)
    t.start()
    kills = []
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 2.5))
            pids = _ray.get(coord.worker_pids.remote(), timeout=60)
            slot = rng.choice(sorted(pids))
            os.kill(pids[slot], signal.SIGKILL)
            kills.append((slot, pids[slot]))
            time.sleep(0.5)
            wait_for(lambda: _all_assigned(coord), 60, "the killed worker to be back with its partitions")
        t.join()
        wait_for(lambda: committed_all(settings, config), 120, "all events committed")
        status = answered_status(coord)
    finally:
        t.join()
        stop_coordinator(coord)
    print("kills:", kills, "restarts:", {w["slot"]: w["restarts"] for w in status["workers"]})
    assert sum(w["restarts"] for w in status["workers"]) == 3
    assert sum(w["resets"] for w in status["workers"]) == 0  # bad input never reset a worker
    dead = [parse_dead_letter(m) for m in read_topic(settings, config.dlq_topic)]
    positions = {(d.source_partition, d.source_offset, d.event_index or 0) for d in dead}
    assert len(positions) == len(dead) == len(bad)  # each bad message dead-lettered exactly once
    assert {d.reason for d in dead} == {"not_json", "not_finite", "too_large", "scoring_error"}
    poisoned = {(d.source_partition, d.source_offset, 0) for d in dead if d.reason == "scoring_error"}
    verdict = run_verifier(settings, config, model, handle, PARTITIONS, exclude=poisoned)
    assert verdict.expected == 50_000  # in == scored + dead-lettered: 50,000 scored, every bad one in the DLQ
    assert 0 < verdict.state_keys_checked < 2000  # keys idle past the TTL at the end are gone
    assert verdict.ok, verdict.line


def test_kill_9_without_transactions_loses_nothing(new_stream, ray_local, tmp_path):
    """At least once made true: with transactions off, offsets are committed only after every send of the
    batch succeeded, so a worker SIGKILLed twice mid-stream loses no event (duplicates allowed, counted)."""
    settings, _, schema, model, handle = new_stream("alo", PARTITIONS)
    events = make_events(schema, 20_000, 500, seed=5)
    config = worker_config(settings, schema, tmp_path / "ckpt", transactions=False)
    coord = start_coordinator(config, handle, 2, PARTITIONS)
    chunks = [events.slice(i, 2000) for i in range(0, events.num_rows, 2000)]
    t = threading.Thread(target=lambda: [produce_paced(settings, schema, c, 500, 0.1) for c in chunks])
    t.start()
    try:
        for slot in (0, 1):
            wait_for(lambda: scored_total(coord) > 2000, 60, "scores flowing")
            os.kill(_ray.get(coord.worker_pids.remote(), timeout=60)[slot], signal.SIGKILL)
            time.sleep(0.5)
            wait_for(lambda: _all_assigned(coord), 60, "the killed worker to be back with its partitions")
        t.join()
        wait_for(lambda: committed_all(settings, config), 120, "all events committed")
    finally:
        t.join()
        stop_coordinator(coord)
    verdict = run_verifier(settings, config, model, handle, PARTITIONS, mode="at_least_once")
    print("duplicates (allowed):", verdict.duplicates)
    assert verdict.expected == 20_000 and verdict.missing == 0
    assert verdict.ok, verdict.line


def test_broker_restart_exactly_once(ray_local, tmp_path):
    """The broker is stopped with SIGTERM mid-stream (workers running, connected, holding state; more events
    to come) and started again on its data dir: workers reconnect and carry on, and the verifier finds every
    event scored exactly once.

    The SIGTERM waits until the broker's saved data holds everything written so far: the embedded broker
    acknowledges writes before it saves them (one JSON snapshot a second, ``kafka.json`` in its data dir) and
    was measured losing up to ~1 s of acknowledged events, scores and transaction markers on SIGTERM, which no
    client can make up for. The workers also guard against a broker that restarts during a transaction
    (abort, reset to checkpoints, abort markers on their output partitions); that path is exercised by the
    kill -9 test's fencing, not here.
    """
    broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port())
    broker.start()
    coord = None
    try:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=5000)
        _, _, schema, model, handle = scoring_stream(settings, "restart", PARTITIONS, tmp_path / "model")
        events = make_events(schema, 16_000, 400, seed=4)
        config = worker_config(settings, schema, tmp_path / "ckpt")
        coord = start_coordinator(config, handle, 2, PARTITIONS)

        produce_paced(settings, schema, events.slice(0, 8000), 1000)
        wait_for(lambda: committed_all(settings, config), 60, "the first half committed")
        written = _written_so_far(settings, config)
        wait_for(lambda: _saved_covers(broker, written), 60, "the broker's saved data to hold the first half")
        broker.stop()  # SIGTERM
        broker.start()
        produce_paced(settings, schema, events.slice(8000), 1000)
        wait_for(lambda: committed_all(settings, config), 120, "all events committed")
        status = _ray.get(coord.status.remote())
        stop_coordinator(coord)
        coord = None
        assert sum(w["restarts"] for w in status["workers"]) == 0
        verdict = run_verifier(settings, config, model, handle, PARTITIONS)
        assert verdict.expected == 16_000
        assert verdict.ok, verdict.line
    finally:
        if coord is not None:
            stop_coordinator(coord)
        broker.stop()


def _written_so_far(settings: KafkaSettings, config) -> dict[tuple, int]:
    """The live end offset of every partition of the pipeline's topics, and the scoring group's committed
    offsets: what the broker's saved data must hold before a SIGTERM loses nothing acknowledged."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.client_kwargs(), group_id=config.group_id, enable_auto_commit=False)
    try:
        topics = (config.events_topic, config.scores_topic, config.dlq_topic, config.shadow_topic)
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = consumer.end_offsets(tps)
        out: dict[tuple, int] = {("end", tp.topic, tp.partition): e for tp, e in ends.items()}
        for tp in tps:
            if tp.topic == config.events_topic:
                out[("committed", config.group_id, tp.topic, tp.partition)] = consumer.committed(tp) or 0
        return out
    finally:
        consumer.close()


def _saved_covers(broker: EmbeddedBroker, written: dict[tuple, int]) -> bool:
    """True when the broker's last save (``kafka.json``) holds at least ``written``'s offsets (False while the
    file is missing or half-written)."""
    try:
        saved = json.loads((broker.data_dir / "kafka.json").read_text())
    except (OSError, ValueError):
        return False
    have = {
        ("end", name, pid): part["high_watermark"]
        for name, topic in saved["topics"]
        for pid, part in topic["partitions"]
    }
    have |= {("committed", *key): off for key, off in saved["committed_offsets"]}
    return all(have.get(k, -1) >= v for k, v in written.items())
