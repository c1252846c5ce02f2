"""WorkerClients: a scoring worker's Kafka clients for the partitions it owns, by partition number.

One read_committed consumer with manual assignment (no group rebalancing: the coordinator assigns), and one
producer behind a :class:`ScoresTransaction` (transactional with a per-slot id, so a new incarnation fences
the old one). Made together and closed together: after a Kafka error the worker drops both and connects
again. The worker speaks partition numbers; TopicPartition objects stay in here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from rnnstream.workers.dead_letter import DeadLetterWriter
from rnnstream.workers.kafka_client_lean import lean_client_kwargs
from rnnstream.workers.kafka_io_fast_fetch import install_fast_fetch
from rnnstream.workers.score_emitter import ScoreEmitter
from rnnstream.workers.scores_transaction import ScoresTransaction
from rnnstream.workers.worker_config import WorkerConfig, transactional_id

DEAD_LETTER_HEADROOM = 16 * 1024  # a dead letter's key (<= 1 KiB) and headers (detail <= 1,000 bytes)


class WorkerClients:
    """Consumer, transaction, score emitter and dead-letter writer of one worker incarnation."""

    def __init__(self, config: WorkerConfig, slot: int) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.config = config
        kw = {**lean_client_kwargs(), **config.kafka.client_kwargs()}  # the user's settings win
        self.consumer = KafkaConsumer(
            **kw,
            group_id=config.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
            fetch_max_bytes=config.fetch_max_bytes,
            max_partition_fetch_bytes=config.max_partition_fetch_bytes,
            fetch_max_wait_ms=max(1, config.batch_linger_ms),
        )
        install_fast_fetch(self.consumer)  # fetched batches read by a compiled loop (same records)
        pkw: dict[str, Any] = {
            "linger_ms": 2,
            "batch_size": 256 * 1024,
            "max_request_size": config.max_record_bytes,  # what the broker takes, else a send fails late
            "max_block_ms": 20_000,
        }
        if config.transactions:
            pkw["transactional_id"] = transactional_id(config, slot)
        try:
            producer = KafkaProducer(**kw, **pkw)
        except Exception:
            self.consumer.close(autocommit=False)
            raise
        self.tx = ScoresTransaction(producer, config.transactions, config.commit_timeout_ms)
        self.emitter = ScoreEmitter(self.tx, config)
        self.dead_letters = DeadLetterWriter(
            config.schema,
            producer=producer,
            topic=config.dlq_topic,
            send=self.tx.send,
            max_payload_bytes=config.max_record_bytes - DEAD_LETTER_HEADROOM,
        )
        if config.transactions:
            try:
                self.tx._guard(producer.init_transactions)  # fences our previous incarnation, aborts its txn
            except Exception:
                self.close()
                raise

    def _tp(self, partition: int) -> Any:
        from kafka import TopicPartition

        return TopicPartition(self.config.events_topic, partition)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tx.producer.close(timeout=2)
        with contextlib.suppress(Exception):
            self.consumer.close(autocommit=False)

    def assign(self, next_offsets: Mapping[int, int]) -> None:
        """Own exactly these partitions, each read from its next offset."""
        tps = [self._tp(p) for p in sorted(next_offsets)]
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, next_offsets[tp.partition])

    def positions(self, partition: int) -> tuple[int, int | None]:
        """(log start offset, the group's committed offset or None) of ``partition``."""
        tp = self._tp(partition)
        start = self.consumer.beginning_offsets([tp]).get(tp, 0) or 0
        return int(start), self.consumer.committed(tp)

    def poll_batch(self, max_events: int, linger_ms: int, idle_ms: int) -> dict[int, list]:
        """Messages by partition: up to ``max_events``, or what came within ``linger_ms`` after the first;
        ``idle_ms``: how long to wait for a first message."""
        out: dict[int, list] = {}
        n = 0
        deadline = None
        while True:
            timeout = idle_ms if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            got = self.consumer.poll(timeout_ms=timeout, max_records=max(1, max_events - n))
            for tp, msgs in got.items():
                out.setdefault(tp.partition, []).extend(msgs)
                n += len(msgs)
            if deadline is None:
                if not n:
                    return out
                deadline = time.monotonic() + linger_ms / 1000
            if n >= max_events or time.monotonic() >= deadline or not got:
                return out

    def caught_up(self, next_offsets: Mapping[int, int]) -> bool:
        """True when no partition has a known backlog (high watermark of the last fetch, no network call).

        A transaction's commit marker takes the offset after its last record, so after a transactional
        producer's batch the high watermark stays one past the next event; the consumer's position has moved
        past the marker once everything fetched was handed out, and that counts as caught up (otherwise the
        commit waits for ``commit_interval_ms``)."""
        try:
            for p, nxt in next_offsets.items():
                tp = self._tp(p)
                hw = self.consumer.highwater(tp)
                if hw is not None and hw > nxt and hw > (self.consumer.position(tp, timeout_ms=0) or 0):
                    return False
        except Exception:
            return False
        return True

    def _offsets(self, next_offsets: Mapping[int, int]) -> dict:
        from kafka.structs import OffsetAndMetadata

        return {self._tp(p): OffsetAndMetadata(off, "", -1) for p, off in next_offsets.items()}

    def offer_offsets(self, next_offsets: Mapping[int, int]) -> None:
        """Attach the offsets the batch in hand will reach to the transaction before it is scored (see
        :meth:`ScoresTransaction.offer_offsets`)."""
        self.tx.offer_offsets(self._offsets(next_offsets), self.config.group_id)

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commit the open transaction with these consumed offsets (see :meth:`ScoresTransaction.commit`)."""
        self.tx.commit(self._offsets(next_offsets), self.config.group_id, self.consumer)

    def pause(self, partitions: Iterable[int]) -> None:
        self.consumer.pause(*[self._tp(p) for p in partitions])

    def resume(self, partitions: Iterable[int]) -> None:
        self.consumer.resume(*[self._tp(p) for p in partitions])
