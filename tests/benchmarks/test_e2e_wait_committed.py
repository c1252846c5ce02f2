"""``benchmarks/e2e_fixtures.wait_committed`` (the benchmarks' end of a run) against the embedded broker: it
waits for the group's commits on every partition asked (default: every partition's end), not for less, and
stops at once when the committer failed; and the peer benchmark's split of a topic into its warm-up (one
message a partition) and the main messages after it."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_fixtures as e2e
import peer_quixstreams


def test_wait_committed_waits_for_every_partition(kafka_settings) -> None:
    pipeline = f"wait-{uuid.uuid4().hex[:8]}"
    topic = f"{pipeline}.events"
    e2e.create_topics(kafka_settings, pipeline)
    producer = KafkaProducer(**kafka_settings.client_kwargs())
    for i in range(10):
        producer.send(topic, b"x", partition=i % e2e.PARTITIONS)
    producer.flush()
    producer.close()
    group = f"g-{pipeline}"
    consumer = KafkaConsumer(**kafka_settings.client_kwargs(), group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(e2e.PARTITIONS)]
    try:
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(3, "", -1) for tp in tps[:2]})  # partitions 2, 3 not yet
        with pytest.raises(TimeoutError):
            e2e.wait_committed(kafka_settings, group, topic, timeout_s=0.3)
        with pytest.raises(RuntimeError, match="failed before committing"):
            e2e.wait_committed(kafka_settings, group, topic, timeout_s=30, alive=lambda: False)
        assert e2e.wait_committed(kafka_settings, group, topic, timeout_s=5, ends={0: 3, 1: 2, 2: 0}) > 0
        consumer.commit({tp: OffsetAndMetadata(2, "", -1) for tp in tps[2:]})  # every end: 3, 3, 2, 2
        assert e2e.wait_committed(kafka_settings, group, topic, timeout_s=5) > 0
    finally:
        consumer.close()


def test_warm_up_and_main_messages_split_by_partition() -> None:
    warm = [(p, b"w", f"w{p}-{i}".encode(), []) for p in range(e2e.PARTITIONS) for i in range(2)]
    main = [(p, b"k", f"m{p}-{i}".encode(), []) for p in range(e2e.PARTITIONS) for i in range(3)]
    everything = sorted(warm + main, key=lambda r: (r[0], r[2].startswith(b"m"), r[2]))
    assert peer_quixstreams.after(warm, everything) == sorted(main)
    firsts = peer_quixstreams.one_per_partition(warm)
    assert [r[2] for r in firsts] == [b"w0-0", b"w1-0", b"w2-0", b"w3-0"]
    with pytest.raises(RuntimeError, match="partitions"):
        peer_quixstreams.one_per_partition(warm[:-2])
