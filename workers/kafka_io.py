"""Thin Kafka clients over kafka-python: a partition consumer and topic admin (producing events:
:mod:`rnnstream.workers.event_producer`).

Partition ownership is ours (DESIGN.md): the consumer is always manually ``assign``-ed the partitions it
should read and never joins a group rebalance. A ``group_id`` is still given so that the offsets a worker
commits are stored in Kafka (visible as lag to standard Kafka tools) and can be read back.

Nothing here is specific to the embedded broker; everything takes :class:`KafkaSettings`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from rnnstream.workers.event_codec import (
    DecodedBatch,
    EventDecoder,
)
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT, release_topic

PREFETCH_MIN_MESSAGES = 256  # poll_decoded overlaps decode with the next poll from this many messages on


@dataclass(frozen=True)
class TopicNames:
    """The three topics of a pipeline."""

    events: str
    scores: str
    dlq: str

    def all(self) -> tuple[str, str, str]:
        return (self.events, self.scores, self.dlq)


def topic_names(pipeline: str, deployment: str = DEFAULT_DEPLOYMENT) -> TopicNames:
    """``<pipeline>.events``, and the scores and DLQ topics release ``deployment`` writes:
    ``<pipeline>.scores``, ``<pipeline>.dlq`` for the default release (see :func:`release_topic`)."""
    return TopicNames(
        f"{pipeline}.events",
        release_topic(pipeline, deployment, "scores"),
        release_topic(pipeline, deployment, "dlq"),
    )


def partition_for_key(key: str | bytes, num_partitions: int) -> int:
    """The partition Kafka's default (Java and kafka-python) partitioner picks for a non-null key."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % num_partitions


class TopicAdmin:
    """Create and list topics (internal ``__`` topics are hidden)."""

    def __init__(self, settings: KafkaSettings, check: bool = True) -> None:
        if check:
            settings.check_reachable()
        self.settings = settings
        self._admin = KafkaAdminClient(**settings.client_kwargs())

    def list_topics(self) -> list[str]:
        """Topic names, sorted, without Kafka's internal ``__`` topics."""
        return sorted(t for t in self._admin.list_topics() if not t.startswith("__"))

    def partitions(self, topic: str) -> int | None:
        """Number of partitions of ``topic``, or None if it does not exist."""
        if topic not in self._admin.list_topics():
            return None
        desc = self._admin.describe_topics([topic])
        for d in desc:
            if d.get("name") == topic and not d.get("error_code"):
                return len(d.get("partitions") or [])
        return None

    def create_topics(
        self, names: Iterable[str], partitions: int, replication_factor: int = 1
    ) -> dict[str, int]:
        """Create the topics that are missing; returns ``{name: partitions}`` of every named topic.

        Existing topics are left as they are (their partition count is reported, not changed).
        """
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        names = list(names)
        existing = set(self._admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # raced with another creator: fine
                self._admin.create_topics(
                    {
                        n: {"num_partitions": partitions, "replication_factor": replication_factor}
                        for n in missing
                    },
                    timeout_ms=10_000,
                )
        out: dict[str, int] = {}
        deadline = time.monotonic() + 10.0
        for n in names:
            count = self.partitions(n)
            while count is None and time.monotonic() < deadline:
                time.sleep(0.05)
                count = self.partitions(n)
            if count is None:
                raise RuntimeError(f"topic {n} did not appear after create")
            out[n] = count
        return out

    def create_pipeline_topics(
        self, pipeline: str, partitions: int, replication_factor: int = 1
    ) -> dict[str, int]:
        """Create ``<p>.events``, ``<p>.scores``, ``<p>.dlq`` with ``partitions`` partitions if missing."""
        return self.create_topics(topic_names(pipeline).all(), partitions, replication_factor)

    def delete_topics(self, names: Iterable[str]) -> None:
        names = [n for n in names if n in set(self._admin.list_topics())]
        if names:
            self._admin.delete_topics(names, timeout_ms=10_000)

    def close(self) -> None:
        self._admin.close()

    def __enter__(self) -> TopicAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PartitionConsumer:
    """Reads given partitions of one topic: manual assign, seek, poll raw messages, pause/resume, commit.

    ``poll`` returns kafka-python ``ConsumerRecord`` s (``topic, partition, offset, timestamp, key, value,
    headers``) in partition order, offsets ascending within a partition; decode them with
    :func:`rnnstream.workers.event_codec.decode`. Offsets given to :meth:`commit` are the *next* offset to
    read. Without a committed offset a partition starts at ``auto_offset_reset`` (earliest by default).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        partitions: Iterable[int] = (),
        *,
        group_id: str | None = None,
        isolation_level: str = "read_uncommitted",
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 2000,
        fetch_max_bytes: int = 50 * 1024 * 1024,
        max_partition_fetch_bytes: int = 4 * 1024 * 1024,
        check: bool = True,
        **consumer_kwargs: Any,
    ) -> None:
        if isolation_level not in ("read_uncommitted", "read_committed"):
            raise ValueError("isolation_level must be read_uncommitted or read_committed")
        if check:
            settings.check_reachable()
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        kw = settings.client_kwargs()
        kw.update(
            group_id=group_id,
            enable_auto_commit=False,
            isolation_level=isolation_level,
            auto_offset_reset=auto_offset_reset,
            max_poll_records=max_poll_records,
            fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
        )
        kw.update(consumer_kwargs)
        self._consumer = KafkaConsumer(**kw)
        self._tps: dict[int, TopicPartition] = {}
        self._prefetched: list[ConsumerRecord] | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        parts = list(partitions)
        if parts:
            self.assign(parts)

    @property
    def kafka(self) -> KafkaConsumer:
        """The underlying kafka-python consumer (for what this class does not wrap)."""
        return self._consumer

    def _tp(self, partition: int) -> TopicPartition:
        tp = self._tps.get(partition)
        if tp is None:
            tp = TopicPartition(self.topic, int(partition))
        return tp

    def partitions_for_topic(self) -> list[int]:
        """All partitions of the topic (from cluster metadata)."""
        parts = self._consumer.partitions_for_topic(self.topic)
        return sorted(parts or ())

    def assign(self, partitions: Iterable[int]) -> None:
        """Own exactly these partitions (replaces the previous assignment; no group rebalance)."""
        self._prefetched = None
        self._tps = {int(p): TopicPartition(self.topic, int(p)) for p in partitions}
        self._consumer.assign(list(self._tps.values()))

    def assignment(self) -> list[int]:
        return sorted(self._tps)

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on (the next poll returns it first)."""
        self._drop_prefetched([partition])
        self._consumer.seek(self._tp(partition), int(offset))

    def seek_to_beginning(self, partitions: Iterable[int] | None = None) -> None:
        self._consumer.seek_to_beginning(*self._without_prefetched(partitions))

    def seek_to_end(self, partitions: Iterable[int] | None = None) -> None:
        self._consumer.seek_to_end(*self._without_prefetched(partitions))

    def position(self, partition: int) -> int:
        """Offset of the next message poll will return for ``partition``."""
        return int(self._consumer.position(self._tp(partition)))

    def poll(self, max_records: int = 2000, timeout_ms: int = 100) -> list[ConsumerRecord]:
        """Up to ``max_records`` messages from the assigned, unpaused partitions (waits up to timeout_ms)."""
        got = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if not got:
            return []
        if len(got) == 1:
            return next(iter(got.values()))
        out: list[ConsumerRecord] = []
        for tp in sorted(got, key=lambda t: t.partition):
            out.extend(got[tp])
        return out

    def poll_decoded(
        self, decoder: EventDecoder, max_records: int = 2000, timeout_ms: int = 100, prefetch: bool = True
    ) -> DecodedBatch:
        """Poll and decode. With ``prefetch`` and a poll of many messages (JSON) the next poll runs while this
        batch decodes in a helper thread (pyarrow parses without the GIL), hiding most of the decode time.

        With prefetch the consumer's :meth:`position` may be one poll ahead of what was returned; use the
        offsets in the DecodedBatch as the truth. ``seek``, ``assign`` and ``pause`` drop prefetched messages
        of the partitions they touch, so a seek is exact.
        """
        if not prefetch:
            return decoder.decode(self.poll(max_records, timeout_ms))
        msgs = self._prefetched
        self._prefetched = None
        if not msgs:
            msgs = self.poll(max_records, timeout_ms)
        if len(msgs) < PREFETCH_MIN_MESSAGES:
            # few (Arrow) messages: decoding makes many short GIL-releasing pyarrow calls that would convoy
            # with a polling thread; decode them inline
            return decoder.decode(msgs)
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix="rnnstream-decode")
        future = self._decode_pool.submit(decoder.decode, msgs)
        nxt: list[ConsumerRecord] = []
        while not nxt and not future.done():
            nxt = self.poll(max_records, timeout_ms=5)
        self._prefetched = nxt or None
        return future.result()

    def _without_prefetched(self, partitions: Iterable[int] | None) -> list[TopicPartition]:
        """The topic-partitions of ``partitions`` (all assigned when None), their prefetched messages
        dropped (see :meth:`_drop_prefetched`): before a seek or pause, nothing read ahead may come out."""
        tps = [self._tp(p) for p in (self._tps if partitions is None else partitions)]
        self._drop_prefetched([tp.partition for tp in tps])
        return tps

    def _drop_prefetched(self, partitions: Iterable[int]) -> None:
        """Forget prefetched messages of ``partitions`` and rewind them to the first one dropped."""
        if not self._prefetched:
            return
        drop = set(partitions)
        first: dict[int, int] = {}
        for m in self._prefetched:
            if m.partition in drop and m.partition not in first:
                first[m.partition] = m.offset
        self._prefetched = [m for m in self._prefetched if m.partition not in drop] or None
        for p, off in first.items():
            self._consumer.seek(self._tp(p), off)

    def pause(self, partitions: Iterable[int] | None = None) -> None:
        """Stop fetching these partitions (all assigned when None) until resumed: backpressure."""
        self._consumer.pause(*self._without_prefetched(partitions))

    def resume(self, partitions: Iterable[int] | None = None) -> None:
        tps = [self._tp(p) for p in (self._tps if partitions is None else partitions)]
        self._consumer.resume(*tps)

    def paused(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.paused())

    def commit(self, offsets: Mapping[int, int], metadata: str = "") -> None:
        """Store ``{partition: next offset to read}`` for this consumer's group_id (blocking)."""
        if self.group_id is None:
            raise ValueError("commit needs a group_id (give one to PartitionConsumer)")
        if offsets:
            self._consumer.commit(
                {self._tp(p): OffsetAndMetadata(int(o), metadata, -1) for p, o in offsets.items()}
            )

    def committed(self, partition: int) -> int | None:
        """The group's committed next offset for ``partition``, or None if nothing was committed."""
        if self.group_id is None:
            return None
        got = self._consumer.committed(self._tp(partition))
        return None if got is None else int(got)

    def end_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Offset after the last message (high watermark; last stable offset for read_committed)."""
        tps = [self._tp(p) for p in (self._tps if partitions is None else partitions)]
        got = self._consumer.end_offsets(tps)
        return {tp.partition: int(o) for tp, o in got.items()}

    def beginning_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        tps = [self._tp(p) for p in (self._tps if partitions is None else partitions)]
        got = self._consumer.beginning_offsets(tps)
        return {tp.partition: int(o) for tp, o in got.items()}

    def lag(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Messages not yet read per partition: end offset minus position."""
        ends = self.end_offsets(partitions)
        return {p: max(0, end - self.position(p)) for p, end in ends.items()}

    def close(self) -> None:
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True)
        self._consumer.close(autocommit=False)

    def __enter__(self) -> PartitionConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
