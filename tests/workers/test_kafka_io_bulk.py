"""Bulk send and the compiled fetch reader against the embedded broker: what a reader sees is exactly what
kafka-python's own send and reader give (keys, values, headers, offsets, timestamps, aborted transactions)."""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from rnnstream.workers.kafka_io import TopicAdmin
from rnnstream.workers.kafka_io_bulk_send import bulk_supported, send_records
from rnnstream.workers.kafka_io_fast_fetch import install_fast_fetch
from rnnstream.workers.kafka_settings import KafkaSettings


@pytest.fixture
def settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


def _topic(settings: KafkaSettings) -> str:
    name = f"bulk{uuid.uuid4().hex[:8]}"
    with TopicAdmin(settings) as admin:
        admin.create_topics([name], 2)
    return name


def _read(settings: KafkaSettings, topic: str, offset: int, expect: int, fast: bool) -> list:
    c = KafkaConsumer(
        **settings.client_kwargs(),
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=500,  # several polls: records taken part way through a batch
    )
    try:
        if fast:
            assert install_fast_fetch(c)
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, offset)
        out: list = []
        deadline = time.monotonic() + 30
        while len(out) < expect and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=200).values():
                out.extend(msgs)
        return out
    finally:
        c.close()


def test_bulk_send_in_a_transaction_reads_back_like_kafka_python(settings: KafkaSettings) -> None:
    topic = _topic(settings)
    keys = [None if i % 50 == 0 else f"key-{i}" for i in range(3000)]
    values = [f'{{"i":{i},"pad":"{"x" * (i % 200)}"}}'.encode() for i in range(3000)]
    p = KafkaProducer(**settings.client_kwargs(), transactional_id=f"t{uuid.uuid4().hex[:8]}", linger_ms=2)
    assert bulk_supported(p)
    p.init_transactions()
    p.begin_transaction()  # aborted: read_committed readers must skip these
    send_records(p, topic, 0, pa.array(keys[:100]), pa.array(values[:100], pa.binary()))
    p.flush()
    p.abort_transaction()
    p.begin_transaction()
    futures = send_records(p, topic, 0, pa.array(keys), pa.array(values, pa.binary()))
    p.send(topic, value=b"one more", key=b"k", partition=0, headers=[("h", b"v"), ("e", b"")])
    p.commit_transaction()
    p.close()
    assert len(futures) > 1 and not any(f.failed() for f in futures)
    # offsets: 0-99 aborted, 100 its marker, 101-3100 the bulk records, 3101 the last one, 3102 a marker
    from_start = _read(settings, topic, 0, 3001, fast=True)
    assert from_start == _read(settings, topic, 0, 3001, fast=False)
    assert [(m.key, m.value) for m in from_start[:-1]] == [
        (None if k is None else k.encode(), v) for k, v in zip(keys, values, strict=True)
    ]
    assert [m.offset for m in from_start] == list(range(101, 3102))
    last = from_start[-1]
    assert last.headers == [("h", b"v"), ("e", b"")] and last.serialized_header_size == 3
