"""The worker's lean kafka-python options: the selector answers ``get_key`` as the stdlib's does (without
formatting the socket), and a producer and consumer built with them still write and read through a real
broker (a transaction committed, its records read back ``read_committed``)."""

from __future__ import annotations

import selectors
import socket
import uuid

import pytest

from rnnstream.workers.kafka_client_lean import QuietKeySelector, lean_client_kwargs


class _NoRepr(socket.socket):
    def __repr__(self) -> str:  # the stock get_key would call this for its KeyError message
        raise AssertionError("repr of the socket was formatted")


def test_get_key_answers_like_the_default_selector_without_formatting_the_socket():
    a, b = socket.socketpair()
    quiet_sock = _NoRepr(fileno=a.detach())
    quiet, stock = QuietKeySelector(), selectors.DefaultSelector()
    try:
        with pytest.raises(KeyError):
            quiet.get_key(quiet_sock)  # not registered: a bare KeyError, no repr
        with pytest.raises(KeyError):
            stock.get_key(b)
        quiet.register(quiet_sock, selectors.EVENT_READ, "data")
        key = quiet.get_key(quiet_sock)
        assert key.fileobj is quiet_sock and key.events == selectors.EVENT_READ and key.data == "data"
        quiet.unregister(quiet_sock)
        with pytest.raises(KeyError):
            quiet.get_key(quiet_sock)
        stray = socket.socket()
        stray.close()  # a closed socket (fileno -1): ValueError, as the stock selector says
        with pytest.raises(ValueError):
            stock.get_key(stray)
        with pytest.raises(ValueError):
            quiet.get_key(stray)
    finally:
        quiet.close()
        stock.close()
        quiet_sock.close()
        b.close()
    with pytest.raises(RuntimeError):
        quiet.get_key(b)  # closed selector


def test_lean_clients_commit_a_transaction_read_back_committed(kafka_settings):
    from kafka import KafkaConsumer, KafkaProducer

    from rnnstream.workers.kafka_io import TopicAdmin

    topic = f"lean-{uuid.uuid4().hex[:8]}"
    with TopicAdmin(kafka_settings) as admin:
        admin.create_topics([topic], 1)
    kw = {**lean_client_kwargs(), **kafka_settings.client_kwargs()}
    producer = KafkaProducer(**kw, transactional_id=f"{topic}-tx")
    try:
        assert isinstance(producer._sender._client._net._selector, QuietKeySelector)
        assert not producer.metrics()  # no sensors kept
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(20):
            producer.send(topic, value=b"v%d" % i, key=b"k", partition=0)
        producer.commit_transaction()
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(
        topic, **kw, isolation_level="read_committed", auto_offset_reset="earliest", group_id=None
    )
    try:
        got: list[bytes] = []
        for _ in range(100):
            for msgs in consumer.poll(timeout_ms=200).values():
                got += [m.value for m in msgs]
            if len(got) >= 20:
                break
        assert got == [b"v%d" % i for i in range(20)]
    finally:
        consumer.close()


def test_manual_assignment_polls_without_the_coordinator_round_trip_and_still_commits(kafka_settings):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from rnnstream.workers.kafka_client_lean import skip_idle_coordinator_poll
    from rnnstream.workers.kafka_io import TopicAdmin

    topic = f"lean-poll-{uuid.uuid4().hex[:8]}"
    with TopicAdmin(kafka_settings) as admin:
        admin.create_topics([topic], 1)
    producer = KafkaProducer(**kafka_settings.client_kwargs())
    try:
        for i in range(50):
            producer.send(topic, value=b"v%d" % i, partition=0)
        producer.flush()
    finally:
        producer.close(timeout=5)
    kw = {**lean_client_kwargs(), **kafka_settings.client_kwargs()}
    tp = TopicPartition(topic, 0)

    def consumer() -> KafkaConsumer:
        group = f"{topic}-g"
        return KafkaConsumer(**kw, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")

    c = consumer()
    try:
        assert skip_idle_coordinator_poll(c)
        asked = [0]
        stock = c._coordinator.ensure_coordinator_ready

        def counted(*a, **k):
            asked[0] += 1
            return stock(*a, **k)

        c._coordinator.ensure_coordinator_ready = counted
        c.assign([tp])
        c.seek(tp, 0)
        got: list[bytes] = []
        for _ in range(100):
            for msgs in c.poll(timeout_ms=200, max_records=7).values():
                got += [m.value for m in msgs]
            if len(got) >= 50:
                break
        assert got == [b"v%d" % i for i in range(50)]
        assert asked[0] == 0  # no poll asked the coordinator
        c.commit({tp: OffsetAndMetadata(50, "", -1)})
    finally:
        c.close()
    again = consumer()
    try:
        assert again.committed(tp) == 50
    finally:
        again.close()
    auto = KafkaConsumer(**kw, group_id=f"{topic}-a", enable_auto_commit=True)
    try:
        assert not skip_idle_coordinator_poll(auto)  # auto commit needs the stock poll
    finally:
        auto.close()
