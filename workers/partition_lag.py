"""Lag of a worker's partitions, read from the broker by a watcher of its own, apart from the worker's loop.

The worker's loop thread does everything Kafka with its own clients; while those fail (reset to checkpoints,
backing off) or the loop is stuck between cycles, it cannot read end offsets. So a :class:`LagWatch` thread
reads them every ``lag_every_s`` with a consumer of its own (no group, no assignment: one ListOffsets request
a round, made again after a failed read): each owned partition's end offset (its high watermark; events
topics are written without transactions).

Lag of a partition = end offset - the worker's position, where the position is the larger of the worker's
next offset and its committed offset while its loop runs, and the committed offset while it fails (what it
did not commit it will do again). (Not the group's offsets from the broker: an OffsetFetch a round, beside a
transaction that commits offsets every few ms, measurably slowed scoring.) When the broker does not
answer, the reading says so (``error``) and holds no numbers: a stale lag is never shown as fresh.

A partition that is behind and whose position has not moved for ``stall_after_s`` is reported ``stalled``
(and logged once): a worker whose loop is stuck, or that polls and reads nothing (e.g. a fetch response larger
than the client's ``receive_message_max_bytes``, which kafka-python drops and asks for again without end),
says so instead of looking healthy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rnnstream.workers.worker_config import WorkerConfig

log = logging.getLogger(__name__)

READ_TIMEOUT_MS = 5_000


@dataclass(frozen=True)
class LagReading:
    """One read of the broker: lag per partition (only partitions read now), when, and why not."""

    lag: dict[int, int] = field(default_factory=dict)
    at: float | None = None  # wall time of the read (None: never read)
    error: str | None = None  # the broker did not answer this time: ``lag`` is empty
    stalled: dict[int, float] = field(default_factory=dict)  # partition -> seconds behind without progress

    def status(self) -> dict[str, object]:
        """``lag_error`` (why the last read failed, or None), ``lag_age_s`` (seconds since the last
        successful read; None: never read) and ``stalled`` (partitions behind without progress)."""
        age = None if self.at is None else time.time() - self.at
        return {"lag_error": self.error, "lag_age_s": age, "stalled": dict(self.stalled)}


class BrokerOffsets:
    """End and committed offsets of the events topic's partitions, from a consumer of its own."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._consumer = None

    def read(self, partitions: list[int]) -> dict[int, int]:
        """The end offset of each partition; raises when the broker does not answer (the consumer is
        dropped then and made again next time)."""
        from kafka import TopicPartition

        try:
            consumer = self._connect()
            tps = [TopicPartition(self.config.events_topic, p) for p in partitions]
            ends = consumer.end_offsets(tps, timeout_ms=READ_TIMEOUT_MS)
        except Exception:
            self.close()
            raise
        return {tp.partition: int(end) for tp, end in ends.items() if end is not None}

    def _connect(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            kw = {**self.config.kafka.client_kwargs(), "request_timeout_ms": READ_TIMEOUT_MS + 1_000}
            self._consumer = KafkaConsumer(**kw, group_id=None, enable_auto_commit=False)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False)
        self._consumer = None


Positions = dict[int, tuple[int, int]]  # partition -> (next offset, committed offset) of the worker


def lag_of(ends: dict[int, int], positions: Positions, healthy: bool) -> dict[int, int]:
    """Lag per partition of ``positions`` that the broker reported an end for (see the module doc)."""
    out = {}
    for p, (nxt, committed) in positions.items():
        if p in ends:
            position = max(committed, nxt) if healthy else committed
            out[p] = max(0, ends[p] - position)
    return out


class LagWatch:
    """A daemon thread that reads the lag of what ``positions()`` names every ``every_s`` seconds and hands
    each reading to ``on_read``.

    ``positions()`` returns ``((next offset, committed offset) per owned partition, whether the worker's loop
    is healthy)``; it is called from this thread, so it must only read a snapshot the loop publishes.
    """

    def __init__(
        self,
        config: WorkerConfig,
        positions: Callable[[], tuple[Positions, bool]],
        every_s: float,
        name: str = "lag",
        on_read: Callable[[LagReading], None] | None = None,
        stall_after_s: float = 30.0,
    ) -> None:
        self.reading = LagReading()
        self._stall_after_s = stall_after_s
        self._progress: dict[int, tuple[tuple[int, int], float]] = {}  # partition -> (position, since)
        self._on_read = on_read
        self._offsets = BrokerOffsets(config)
        self._positions = positions
        self._every_s = max(0.05, float(every_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rnnstream-{name}-lag", daemon=True)
        self._thread.start()

    def _read(self) -> LagReading:
        """Read once (only from this watcher's thread: the consumer is not thread safe)."""
        positions, healthy = self._positions()
        if not positions:
            self.reading = LagReading(at=time.time())
            return self.reading
        try:
            ends = self._offsets.read(sorted(positions))
        except Exception as exc:
            error = f"lag unknown, the broker did not answer: {type(exc).__name__}: {exc}"[:300]
            if error != self.reading.error:
                log.warning("%s", error)
            self.reading = LagReading(at=self.reading.at, error=error)
            return self.reading
        now = time.time()
        lag = lag_of(ends, positions, healthy)
        self.reading = LagReading(lag, at=now, stalled=self._stalled(lag, positions, now))
        return self.reading

    def _stalled(self, lag: dict[int, int], positions: Positions, now: float) -> dict[int, float]:
        """Partitions behind whose position has not changed for ``stall_after_s`` (seconds, per partition)."""
        since = {}
        for p, behind in lag.items():
            last = self._progress.get(p)
            moved = last is None or last[0] != positions[p] or behind == 0
            since[p] = (positions[p], now if moved else last[1])
        self._progress = since
        stalled = {p: round(now - t, 1) for p, (_, t) in since.items() if now - t >= self._stall_after_s}
        for p in stalled.keys() - self.reading.stalled.keys():
            log.warning(
                "partition %d is %d events behind and has not moved for %.0f s: the worker reads nothing",
                p,
                lag[p],
                stalled[p],
            )
        return stalled

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # never let the watcher die; _read reports errors
                reading = self._read()
                if self._on_read is not None:
                    self._on_read(reading)
            self._stop.wait(self._every_s)
        self._offsets.close()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=timeout)
