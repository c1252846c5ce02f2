"""Shared pytest fixtures.

``kafka_bootstrap``: ONE embedded Kafka-protocol broker for the whole test session, on a free port, with its
data in a temp dir; yields its ``bootstrap_servers`` string ("127.0.0.1:PORT") and stops it with SIGTERM at
the end. Tests that need their own topics should use unique topic names (e.g. ``uuid``-suffixed pipelines) so
they do not see each other's data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
from rnnstream.workers.kafka_settings import KafkaSettings


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The session's embedded broker object (for tests that need its pid, data dir or stderr)."""
    broker = EmbeddedBroker(
        data_dir=tmp_path_factory.mktemp("kafka-broker"), port=free_port(), die_with_parent=True
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: EmbeddedBroker) -> str:
    """``bootstrap_servers`` of the session's embedded broker, e.g. ``"127.0.0.1:40123"``."""
    return kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """:class:`KafkaSettings` for the session's embedded broker."""
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)
