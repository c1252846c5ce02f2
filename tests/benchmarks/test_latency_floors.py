"""The latency floors of ``benchmarks/io_floor`` on the embedded broker: the bare round trip and the bare
exactly-once relay (consume -> transactional produce with the offsets -> commit -> read_committed reader)
each time every message sent, from its own create time."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_fixtures as e2e
import io_floor


def _sender(settings, topic: str, n: int):
    def send() -> None:
        producer = KafkaProducer(**settings.client_kwargs())
        for i in range(n):
            producer.send(topic, b"v%d" % i, key=b"k%d" % i, partition=i % e2e.PARTITIONS)
        producer.flush()
        producer.close()

    return send


def test_txn_relay_floor_reads_every_relayed_message(kafka_settings) -> None:
    pipeline = f"txnfloor-{uuid.uuid4().hex[:8]}"
    e2e.create_topics(kafka_settings, pipeline)
    topic, out = f"{pipeline}.events", f"{pipeline}.raw"
    p50, p99 = io_floor.txn_relay_round_trip_ms(
        kafka_settings, topic, out, e2e.PARTITIONS, _sender(kafka_settings, topic, 40)
    )
    assert 0 <= p50 <= p99
    counts = io_floor.partition_counts(kafka_settings, out, e2e.PARTITIONS)
    # 40 relayed records, the warm-up transaction's and each commit's markers: more offsets than records
    assert sum(counts.values()) >= 40


def test_broker_round_trip_times_every_message(kafka_settings) -> None:
    pipeline = f"rtt-{uuid.uuid4().hex[:8]}"
    e2e.create_topics(kafka_settings, pipeline)
    topic = f"{pipeline}.events"
    p50, p99 = io_floor.broker_round_trip_ms(
        kafka_settings, topic, e2e.PARTITIONS, _sender(kafka_settings, topic, 40)
    )
    assert 0 <= p50 <= p99
