"""Fetch pacing on the embedded broker (which answers an empty fetch at once): an idle consumer's fetches are
at least ``fetch_max_wait_ms`` apart, as under a broker's long poll, and records produced while it idles
are still all delivered, in order (read_committed, from a transaction)."""

from __future__ import annotations

import itertools
import time
import uuid

from rnnstream.workers.kafka_io_fetch_pacing import install_fetch_pacing

MAX_WAIT_MS = 100


def test_idle_fetches_are_paced_and_records_still_arrive(kafka_settings):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.protocol.consumer import FetchRequest

    from rnnstream.workers.kafka_io import TopicAdmin

    topic = f"paced-{uuid.uuid4().hex[:8]}"
    with TopicAdmin(kafka_settings) as admin:
        admin.create_topics([topic], 2)
    kw = kafka_settings.client_kwargs()
    consumer = KafkaConsumer(
        **kw, fetch_max_wait_ms=MAX_WAIT_MS, isolation_level="read_committed", enable_auto_commit=False
    )
    try:
        assert install_fetch_pacing(consumer)
        paced = consumer._fetcher._manager
        assert install_fetch_pacing(consumer) and consumer._fetcher._manager is paced  # not wrapped twice
        sent: list[float] = []
        real_send = paced._paced_manager.send

        def recording_send(request, *args, **kwargs):
            if isinstance(request, FetchRequest):
                sent.append(time.monotonic())
            return real_send(request, *args, **kwargs)

        paced._paced_manager.send = recording_send  # the pacing view calls the manager's send
        consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
        consumer.seek_to_beginning()
        for _ in range(200):  # idle: the topic is empty
            assert consumer.poll(timeout_ms=50) == {}
            if len(sent) >= 6:
                break
        assert len(sent) >= 6, "the consumer did not fetch"
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert min(gaps) >= MAX_WAIT_MS / 1000 * 0.95, gaps  # never sooner than a long poll would answer

        producer = KafkaProducer(**kw, transactional_id=f"{topic}-tx")
        try:
            producer.init_transactions()
            producer.begin_transaction()
            for i in range(30):
                producer.send(topic, value=b"%d" % i, partition=i % 2)
            producer.commit_transaction()
        finally:
            producer.close(timeout=5)
        got: dict[int, list[int]] = {0: [], 1: []}
        for _ in range(200):
            for tp, msgs in consumer.poll(timeout_ms=100).items():
                got[tp.partition] += [int(m.value) for m in msgs]
            if sum(map(len, got.values())) >= 30:
                break
        assert got == {0: list(range(0, 30, 2)), 1: list(range(1, 30, 2))}
    finally:
        consumer.close()


def test_install_refuses_what_it_does_not_know():
    class NotAConsumer:
        pass

    assert install_fetch_pacing(NotAConsumer()) is False
