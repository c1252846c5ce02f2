"""Dead-letter topic: rejected events go to ``<pipeline>.dlq`` with their raw bytes and why.

Bad input never stops a worker and never silently disappears: every :class:`Reject` from decoding becomes
one DLQ message whose value is the reject's raw bytes (the original message value unchanged for
message-level rejects) and whose headers say why and where it came from:

``rnnstream-dlq-reason``, ``rnnstream-dlq-detail``, ``rnnstream-source-topic``,
``rnnstream-source-partition``, ``rnnstream-source-offset``, ``rnnstream-source-timestamp``,
``rnnstream-pipeline``, ``rnnstream-schema-version``, ``rnnstream-encoding`` and, for one bad row of an Arrow
message, ``rnnstream-event-index``. A raw value over ``max_payload_bytes`` (an oversize message) is cut to
that size and ``rnnstream-dlq-truncated`` gives its full length: the dead letter itself always fits.

A writer can share a (transactional) KafkaProducer with the scores writer so that dead letters, scores and
offsets commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.workers.event_codec import ENCODING_HEADER, PIPELINE_HEADER, VERSION_HEADER, Reject
from rnnstream.workers.kafka_io import topic_names
from rnnstream.workers.kafka_settings import KafkaSettings

REASON_HEADER = "rnnstream-dlq-reason"
DETAIL_HEADER = "rnnstream-dlq-detail"
SOURCE_TOPIC_HEADER = "rnnstream-source-topic"
SOURCE_PARTITION_HEADER = "rnnstream-source-partition"
SOURCE_OFFSET_HEADER = "rnnstream-source-offset"
SOURCE_TIMESTAMP_HEADER = "rnnstream-source-timestamp"
EVENT_INDEX_HEADER = "rnnstream-event-index"
TRUNCATED_HEADER = "rnnstream-dlq-truncated"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class DeadLetter:
    """A DLQ message read back: the raw bytes and the headers, parsed."""

    raw: bytes
    key: bytes | None
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int
    pipeline: str
    schema_version: int
    encoding: str
    event_index: int | None
    dlq_partition: int
    dlq_offset: int


def dead_letter_headers(reject: Reject, schema: EventSchema) -> list[tuple[str, bytes]]:
    """The headers of the DLQ message for ``reject``."""
    h = [
        (REASON_HEADER, reject.reason.encode()),
        (DETAIL_HEADER, reject.detail.encode(errors="replace")[:1000]),
        (SOURCE_TOPIC_HEADER, reject.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(reject.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(reject.offset).encode()),
        (SOURCE_TIMESTAMP_HEADER, str(reject.timestamp_ms).encode()),
        (PIPELINE_HEADER, schema.pipeline.encode()),
        (VERSION_HEADER, str(schema.version).encode()),
        (ENCODING_HEADER, reject.encoding.encode()),
    ]
    if reject.event_index is not None:
        h.append((EVENT_INDEX_HEADER, str(reject.event_index).encode()))
    return h


def parse_dead_letter(record: Any) -> DeadLetter:
    """A consumed DLQ message (kafka-python ConsumerRecord or RawMessage) as a :class:`DeadLetter`."""
    h = {k: v for k, v in (record.headers or [])}

    def s(name: str, default: str = "") -> str:
        v = h.get(name)
        return default if v is None else v.decode(errors="replace")

    idx = h.get(EVENT_INDEX_HEADER)
    return DeadLetter(
        raw=record.value or b"",
        key=record.key,
        reason=s(REASON_HEADER),
        detail=s(DETAIL_HEADER),
        source_topic=s(SOURCE_TOPIC_HEADER),
        source_partition=int(s(SOURCE_PARTITION_HEADER, "-1")),
        source_offset=int(s(SOURCE_OFFSET_HEADER, "-1")),
        source_timestamp_ms=int(s(SOURCE_TIMESTAMP_HEADER, "-1")),
        pipeline=s(PIPELINE_HEADER),
        schema_version=int(s(VERSION_HEADER, "-1")),
        encoding=s(ENCODING_HEADER),
        event_index=None if idx is None else int(idx),
        dlq_partition=int(record.partition),
        dlq_offset=int(record.offset),
    )


class DeadLetterWriter:
    """Writes rejects to a pipeline's DLQ topic (``<pipeline>.dlq`` unless ``topic`` is given).

    Give ``producer`` to share one (e.g. transactional) KafkaProducer; else one is made from ``settings``
    and closed by :meth:`close`. A reject goes to DLQ partition ``source partition % DLQ partitions``, so the
    DLQ keeps the source's per-partition order.
    """

    def __init__(
        self,
        schema: EventSchema,
        settings: KafkaSettings | None = None,
        *,
        producer: KafkaProducer | None = None,
        topic: str | None = None,
        send: Any = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if producer is None and settings is None:
            raise ValueError("DeadLetterWriter needs settings or a producer")
        self.schema = schema
        self.topic = topic or topic_names(schema.pipeline).dlq
        self._own = producer is None
        if producer is None:
            assert settings is not None
            settings.check_reachable()
            kw = settings.client_kwargs()
            kw.update(linger_ms=5, max_request_size=8 * 1024 * 1024)
            producer = KafkaProducer(**kw)
        self._producer = producer
        self._send = send  # (topic, value, partition, key=, headers=) -> None; default: the producer's send
        self.max_payload_bytes = int(max_payload_bytes)
        self._num_partitions: int | None = None
        self.written = 0

    def _partition(self, source_partition: int) -> int:
        if self._num_partitions is None:
            parts = self._producer.partitions_for(self.topic)
            self._num_partitions = max(1, len(parts or ()))
        return source_partition % self._num_partitions

    def write(self, rejects: Iterable[Reject]) -> int:
        """Send each reject (asynchronously; call :meth:`flush` to wait). Returns how many were sent."""
        n = 0
        for r in rejects:
            headers = dead_letter_headers(r, self.schema)
            raw = r.raw
            if len(raw) > self.max_payload_bytes:
                headers.append((TRUNCATED_HEADER, str(len(raw)).encode()))
                raw = raw[: self.max_payload_bytes]
            key = None if r.key is None else r.key[:1024]
            partition = self._partition(r.partition)
            if self._send is not None:
                self._send(self.topic, raw, partition, key=key, headers=headers)
            else:
                self._producer.send(self.topic, value=raw, key=key, headers=headers, partition=partition)
            n += 1
        self.written += n
        return n

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        if self._own:
            self._producer.close(timeout=10)

    def __enter__(self) -> DeadLetterWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_dead_letters(
    settings: KafkaSettings, pipeline: str, timeout_s: float = 10.0, expect: int | None = None
) -> list[DeadLetter]:
    """All dead letters of ``pipeline`` (from the beginning to the current end offsets), in DLQ order.

    Reads until every partition reaches its end offset (or ``expect`` letters were read), within timeout_s.
    """
    import time

    from rnnstream.workers.kafka_io import PartitionConsumer

    topic = topic_names(pipeline).dlq
    with PartitionConsumer(settings, topic) as c:
        parts = c.partitions_for_topic()
        c.assign(parts)
        c.seek_to_beginning()
        ends = c.end_offsets()
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for rec in c.poll(max_records=5000, timeout_ms=200):
                out.append(parse_dead_letter(rec))
            if expect is not None and len(out) >= expect:
                break
            if expect is None and all(c.position(p) >= ends[p] for p in parts):
                break
    return out


__all__: Sequence[str] = (
    "DeadLetter",
    "DeadLetterWriter",
    "dead_letter_headers",
    "parse_dead_letter",
    "read_dead_letters",
)
