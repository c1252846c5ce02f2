"""Many records to one partition in one call: whole record batches handed to kafka-python's producer.

kafka-python's ``send`` costs a few microseconds a record in Python (checks, a future, the accumulator's lock,
the record's varints); a JSON score is one record per event, so that was the largest cost of a scored JSON
event. :func:`send_records` encodes the records of a whole partition's scores with a compiled loop
(:func:`rnnstream.workers.kafka_io_records.encode_records`), wraps each ``batch_size`` of them in the
producer's own batch type and appends those batches to its accumulator, where the sender thread drains them
like any other: producer id, epoch and sequence numbers are set there, the transaction covers them (the
partition is added to it first), a failed batch fails its future. The records are the ones ``send`` would
write (same key, value, no headers, the call's timestamp), so readers see no difference.

This reads kafka-python's producer internals (accumulator, batch builder); :func:`bulk_supported` checks
that they are what this module expects (message format v2, no compression, the attributes it sets) and
:func:`send_records` falls back to one ``send`` a record otherwise.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from rnnstream.workers.kafka_io_records import BATCH_HEADER_BYTES, encode_records

_BUILDER_SLOTS = ("_buffer", "_first_timestamp", "_max_timestamp", "_last_offset", "_num_records")


class BatchResult:
    """The outcome of one appended batch, with the ``failed()`` / ``exception`` of a send's future."""

    __slots__ = ("_future",)

    def __init__(self, produce_future: Any) -> None:
        self._future = produce_future

    def failed(self) -> bool:
        f = self._future
        if not f.is_done:
            return False
        return f.failed() or f.value[2] is not None  # value: (base offset, timestamp, record errors or None)

    @property
    def exception(self) -> BaseException | None:
        f = self._future
        if f.failed():
            return f.exception
        if f.is_done and f.value[2] is not None:
            return f.value[2](0)
        return None


def bulk_supported(producer: Any) -> bool:
    """True when the producer's internals are the ones :func:`send_records` appends batches to."""
    try:
        acc = producer._accumulator
        cfg = acc.config
        if cfg["message_version"] != 2 or cfg["compression_attrs"] != 0:
            return False
        from kafka.producer.producer_batch import ProducerBatch  # noqa: F401
        from kafka.record.default_records import DefaultRecordBatchBuilder
        from kafka.record.memory_records import MemoryRecordsBuilder

        return (
            all(s in DefaultRecordBatchBuilder.__slots__ for s in _BUILDER_SLOTS)
            and "_next_offset" in MemoryRecordsBuilder.__slots__
            and hasattr(acc, "_batches")
            and hasattr(acc, "_incomplete")
            and hasattr(acc, "_tp_lock")
            and hasattr(acc, "_appends_in_progress")
            and hasattr(producer, "_sender")
        )
    except Exception:
        return False


def send_records(
    producer: Any, topic: str, partition: int, keys: pa.Array, values: pa.Array, check: bool | None = None
) -> list[Any]:
    """Send ``(keys[i], values[i])`` (binary or string Arrow arrays, no null value) to ``topic``/``partition``
    in order; returns one future-like object per batch (``failed()``, ``exception``), to check after a flush.
    """
    n = len(values)
    if n == 0:
        return []
    if not (bulk_supported(producer) if check is None else check):
        return _send_one_by_one(producer, topic, partition, keys, values)
    from kafka.producer.producer_batch import ProducerBatch
    from kafka.record.memory_records import MemoryRecordsBuilder
    from kafka.structs import TopicPartition

    if producer._closed:
        from kafka.errors import IllegalStateError

        raise IllegalStateError("KafkaProducer already closed!")
    if producer._metadata.partitions_for_topic(topic) is None:
        producer._wait_on_metadata(topic, producer.config["max_block_ms"])
    if partition not in (producer._metadata.partitions_for_topic(topic) or ()):
        raise ValueError(f"partition {partition} of {topic} does not exist")
    acc = producer._accumulator
    batch_size = int(acc.config["batch_size"])
    records, starts, firsts = encode_records(keys, values, batch_size)
    tp = TopicPartition(topic, int(partition))
    tm = producer._transaction_manager
    if tm is not None and tm.is_transactional():
        tm.maybe_add_partition_to_transaction(tp)
    ts = int(time.time() * 1000)
    now = time.monotonic()
    batches = []
    for b in range(len(firsts) - 1):
        count = int(firsts[b + 1] - firsts[b])
        mrb = MemoryRecordsBuilder(2, 0, batch_size)
        inner = mrb._builder
        inner._buffer = bytearray(BATCH_HEADER_BYTES) + records[starts[b] : starts[b + 1]].tobytes()
        inner._first_timestamp = ts
        inner._max_timestamp = ts
        inner._last_offset = count - 1
        inner._num_records = count
        mrb._next_offset = count
        batch = ProducerBatch(tp, mrb, now=now)
        batch.max_record_size = len(inner._buffer) - BATCH_HEADER_BYTES
        batches.append(batch)
    acc._appends_in_progress.increment()
    try:
        with acc._tp_lock(tp):
            if acc._closed:
                from kafka.errors import IllegalStateError

                raise IllegalStateError("RecordAccumulator is closed")
            dq = acc._batches[tp]
            for batch in batches:
                dq.append(batch)
                acc._incomplete.add(batch)
    finally:
        acc._appends_in_progress.decrement()
    producer._sender.wakeup()
    return [BatchResult(batch.produce_future) for batch in batches]


def _send_one_by_one(producer: Any, topic: str, partition: int, keys: pa.Array, values: pa.Array) -> list:
    ks, vs = keys.cast(pa.binary()).to_pylist(), values.cast(pa.binary()).to_pylist()
    send = producer.send
    return [send(topic, value=v, key=k, partition=partition) for k, v in zip(ks, vs, strict=True)]
