"""EventProducer: writes a pipeline's events to its events topic, as JSON or as Arrow batches.

The Arrow producer routes each stream key's events to the partition Kafka's default partitioner (murmur2 of
the key bytes) would pick, so a key lands in one partition whether its events are sent as JSON (Kafka key =
stream key) or inside Arrow batches (Kafka key = None, explicit partition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer

from rnnstream.rnn_core.event_schema import KEY_COLUMN, EventSchema
from rnnstream.workers.event_codec import (
    ARROW,
    JSON,
    encode_arrow,
    event_to_json,
    message_headers,
    table_to_json,
)
from rnnstream.workers.kafka_io import partition_for_key, topic_names
from rnnstream.workers.kafka_settings import KafkaSettings

DEFAULT_EVENTS_PER_ARROW_MESSAGE = 2000


class EventProducer:
    """Writes a pipeline's events (JSON, one per message; or Arrow, many per message) to a topic.

    ``send_arrow`` splits a table by the partition each stream key maps to (Kafka's default partitioner) and
    sends each partition's rows, in row order, as Arrow IPC messages of at most
    ``events_per_message`` events.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        schema: EventSchema,
        topic: str | None = None,
        *,
        linger_ms: int = 5,
        events_per_message: int = DEFAULT_EVENTS_PER_ARROW_MESSAGE,
        check: bool = True,
        **producer_kwargs: Any,
    ) -> None:
        if check:
            settings.check_reachable()
        self.settings = settings
        self.schema = schema
        self.topic = topic or topic_names(schema.pipeline).events
        self.events_per_message = events_per_message
        kw = settings.client_kwargs()
        kw.update(linger_ms=linger_ms, batch_size=256 * 1024, max_request_size=8 * 1024 * 1024)
        kw.update(producer_kwargs)
        self._producer = KafkaProducer(**kw)
        self._json_headers = message_headers(schema, JSON)
        self._arrow_headers = message_headers(schema, ARROW)
        self._partitions: dict[str, int] = {}
        self._route_cache: dict[tuple[str, int], int] = {}

    @property
    def kafka(self) -> KafkaProducer:
        """The underlying kafka-python producer (transactions, raw sends)."""
        return self._producer

    def num_partitions(self, topic: str | None = None) -> int:
        topic = topic or self.topic
        n = self._partitions.get(topic)
        if n is None:
            parts = self._producer.partitions_for(topic)
            if not parts:
                raise RuntimeError(f"topic {topic} has no partitions (create it first)")
            n = self._partitions[topic] = len(parts)
        return n

    def send_json(self, events: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]]) -> int:
        """One JSON message per event, Kafka key = stream key. Returns the number of events sent."""
        if isinstance(events, pa.Table | pa.RecordBatch):
            keys = events.column(KEY_COLUMN).to_pylist()
            values = table_to_json(events)
        else:
            rows = list(events)
            keys = [r[KEY_COLUMN] for r in rows]
            values = [event_to_json(r) for r in rows]
        send, topic, headers = self._producer.send, self.topic, self._json_headers
        for k, v in zip(keys, values, strict=True):
            send(topic, value=v, key=k.encode() if isinstance(k, str) else k, headers=headers)
        return len(values)

    def partitions_of(self, keys: pa.Array | pa.ChunkedArray, num_partitions: int) -> np.ndarray:
        """Partition of each row's stream key (int32 array), computing murmur2 once per distinct key."""
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        enc = pc.dictionary_encode(keys)
        uniques = enc.dictionary.to_pylist()
        cache = self._route_cache
        parts = np.empty(len(uniques), dtype=np.int32)
        for i, k in enumerate(uniques):
            p = cache.get((k, num_partitions))
            if p is None:
                p = partition_for_key(k, num_partitions)
                if len(cache) < 1_000_000:
                    cache[(k, num_partitions)] = p
            parts[i] = p
        return parts[enc.indices.to_numpy(zero_copy_only=False)]

    def send_arrow(self, events: pa.Table | pa.RecordBatch, events_per_message: int | None = None) -> int:
        """Send events as Arrow IPC messages routed by stream key. Returns the number of messages sent."""
        table = pa.Table.from_batches([events]) if isinstance(events, pa.RecordBatch) else events
        if table.num_rows == 0:
            return 0
        per_msg = events_per_message or self.events_per_message
        target = self.schema.arrow_schema()
        table = table.select(target.names).cast(target)
        n_parts = self.num_partitions()
        row_parts = self.partitions_of(table.column(KEY_COLUMN), n_parts)
        sent = 0
        for p in np.unique(row_parts):
            rows = np.flatnonzero(row_parts == p)
            sub = table.take(pa.array(rows)) if len(rows) != table.num_rows else table
            for start in range(0, sub.num_rows, per_msg):
                chunk = sub.slice(start, per_msg).combine_chunks()
                self._producer.send(
                    self.topic,
                    value=encode_arrow(chunk),
                    key=None,
                    partition=int(p),
                    headers=self._arrow_headers,
                )
                sent += 1
        return sent

    def send_raw(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        topic: str | None = None,
    ) -> Any:
        """Send bytes as they are (tests, bridges). Returns kafka-python's future."""
        return self._producer.send(
            topic or self.topic, value=value, key=key, headers=list(headers or []), partition=partition
        )

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
