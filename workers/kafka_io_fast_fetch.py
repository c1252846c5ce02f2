"""A consumer's fetched record batches read by a compiled loop instead of one Python call chain a record.

kafka-python turns each fetched record into a ``DefaultRecord`` (its varints decoded in Python, its headers
parsed into a new list) and then a ``ConsumerRecord``: a few microseconds a record, the second largest cost of
a scored JSON event. :func:`install_fast_fetch` gives one consumer a ``PartitionRecords`` whose batches are
read by :func:`rnnstream.workers.kafka_io_records.parse_records` (positions of every record at once) and
turned into the same ``ConsumerRecord`` tuples in one pass; a run of records with identical header bytes
(every event of one producer) shares one parsed header list.

Everything else is kafka-python's own, unchanged: fetch sessions, positions, the CRC check, compression,
read_committed (aborted transactions skipped, control batches dropped), records before the fetch offset
skipped. A batch that is not message format v2, a control batch, a consumer with deserializers, or records
that do not parse go through kafka-python's reader, which raises its usual errors.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rnnstream.workers.kafka_io_records import parse_records

log = logging.getLogger(__name__)

_LOG_APPEND_TIME = 1


def install_fast_fetch(consumer: Any) -> bool:
    """Read this kafka-python consumer's fetched batches with the compiled reader; False (and nothing
    changed) where kafka-python's fetcher is not the one this module knows."""
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(fetcher, "PartitionRecords", None)
    if base is None or not hasattr(base, "_unpack_records"):
        return False
    try:
        from kafka.consumer.fetcher import ConsumerRecord  # noqa: F401
        from kafka.record.default_records import DefaultRecordBatch

        if not {"_buffer", "_pos", "_num_records"} <= set(DefaultRecordBatch.__slots__):
            return False
    except Exception:
        return False
    if fetcher.config.get("key_deserializer") or fetcher.config.get("value_deserializer"):
        return False
    fetcher.PartitionRecords = _fast_class(base)
    return True


_CLASSES: dict[type, type] = {}


def _fast_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type("FastPartitionRecords", (base,), {"_unpack_records": _unpack_records})
    return cls


def _unpack_records(self: Any, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any) -> Any:
    """kafka-python's ``PartitionRecords._unpack_records`` (3.0), with the records of a plain v2 batch read
    by :func:`records_of_batch`."""
    import kafka.errors as Errors
    from kafka.consumer.fetcher import IsolationLevel

    headers_cache: dict[bytes, tuple[list, int]] = {}
    try:
        batch = records.next_batch()
        last_batch = None
        while batch is not None:
            last_batch = batch
            if self.check_crcs and not batch.validate_crc():
                raise Errors.CorruptRecordError(
                    f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} "
                    "failed crc check"
                )
            if batch.magic == 2:
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                fast = records_of_batch(batch, tp, self.leader_epoch, headers_cache)
            else:
                fast = None
            if fast is not None:
                records_out, size = fast
                self.records_read += len(records_out)
                self.bytes_read += size
                for record in records_out:
                    self.next_fetch_offset = record[3] + 1
                    yield record
            else:
                yield from _slow_records(self, tp, batch, key_deserializer, value_deserializer)
            batch = records.next_batch()
        else:
            if last_batch and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()
    except StopIteration:
        log.exception("StopIteration raised unpacking messageset")
        raise RuntimeError("StopIteration raised unpacking messageset") from None


def _slow_records(self: Any, tp: Any, batch: Any, key_deserializer: Any, value_deserializer: Any) -> Any:
    """kafka-python's own per-record reading of one batch (legacy formats, or records that do not parse)."""
    import kafka.errors as Errors
    from kafka.consumer.fetcher import ConsumerRecord

    for record in batch:
        if self.check_crcs and not record.validate_crc():
            raise Errors.CorruptRecordError(
                f"Record for partition {self.topic_partition} at offset {record.offset} failed crc check"
            )
        key_size = len(record.key) if record.key is not None else -1
        value_size = len(record.value) if record.value is not None else -1
        key = self._deserialize(key_deserializer, tp.topic, record.headers, record.key)
        value = self._deserialize(value_deserializer, tp.topic, record.headers, record.value)
        headers = record.headers
        header_size = _header_size(headers)
        self.records_read += 1
        self.bytes_read += record.size_in_bytes
        self.next_fetch_offset = record.offset + 1
        yield ConsumerRecord(
            tp.topic,
            tp.partition,
            self.leader_epoch,
            record.offset,
            record.timestamp,
            record.timestamp_type,
            key,
            value,
            record.headers,
            record.checksum,
            key_size,
            value_size,
            header_size,
        )


def records_of_batch(
    batch: Any, tp: Any, leader_epoch: int, headers_cache: dict[bytes, tuple[list, int]]
) -> tuple[list, int] | None:
    """The ``ConsumerRecord`` s of one v2 data batch and its bytes, or None when its records do not parse."""
    from kafka.consumer.fetcher import ConsumerRecord

    batch._maybe_uncompress()
    n = batch._num_records
    if n == 0:
        return [], 0
    buf = batch._buffer
    start = batch._pos
    fields = parse_records(np.frombuffer(buf, dtype=np.uint8), start, len(buf), n)
    if fields is None:
        return None
    raw = bytes(buf)
    ts_type = batch.timestamp_type
    if ts_type == _LOG_APPEND_TIME:
        times = [batch.max_timestamp] * n
    else:
        times = (fields[:, 0] + batch.first_timestamp).tolist()
    offsets = (fields[:, 1] + batch.base_offset).tolist()
    k_at, k_len, v_at, v_len, h_at, h_count, ends = fields[:, 2:].T.tolist()
    if not any(h_count):
        headers = [([], -1)] * n
    else:
        headers = []
        for a, z in zip(h_at, ends, strict=True):
            hb = raw[a:z]
            got = headers_cache.get(hb)
            if got is None:
                got = headers_cache[hb] = _parse_headers(hb)
            headers.append(got)
    topic, partition = tp.topic, tp.partition
    out = [
        ConsumerRecord(
            topic,
            partition,
            leader_epoch,
            off,
            t,
            ts_type,
            None if kl < 0 else raw[ka : ka + kl],
            None if vl < 0 else raw[va : va + vl],
            hdr[0],
            None,
            kl,
            vl,
            hdr[1],
        )
        for off, t, ka, kl, va, vl, hdr in zip(offsets, times, k_at, k_len, v_at, v_len, headers, strict=True)
    ]
    return out, len(buf) - start


def _parse_headers(data: bytes) -> tuple[list, int]:
    """A record's headers region (count, key/value pairs) -> (kafka-python's header list, their size)."""
    from kafka.record.util import decode_varint

    count, pos = decode_varint(data, 0)
    headers = []
    for _ in range(count):
        klen, pos = decode_varint(data, pos)
        key = data[pos : pos + klen].decode("utf-8")
        pos += klen
        vlen, pos = decode_varint(data, pos)
        if vlen >= 0:
            value = data[pos : pos + vlen]
            pos += vlen
        else:
            value = None
        headers.append((key, value))
    return headers, _header_size(headers)


def _header_size(headers: list) -> int:
    """kafka-python's ``serialized_header_size``: -1 without headers."""
    if not headers:
        return -1
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)
