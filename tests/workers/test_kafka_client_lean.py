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
