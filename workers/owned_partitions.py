"""OwnedPartitions: the partitions a scoring worker owns, with their checkpoints and state gauges.

Opened from their newest checkpoints (the restore is counted), checkpointed when due (after freeing expired
keys) or when released, each with its :class:`PartitionOffsets`; the keys and state-bytes gauges follow what
is owned now. A due checkpoint is copied on the loop and written in the background (:mod:`checkpoint_writer`:
at most one write per partition, a due one skipped while the previous writes); releasing, reopening and the
final or switch checkpoints first wait for the writes in flight, and write synchronously. (Lag is read from
the broker apart from the worker's clients: :mod:`partition_lag`.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView

from rnnstream.workers.checkpoint_writer import CheckpointWriteFailed, CheckpointWriter, WrittenCheckpoint
from rnnstream.workers.partition_checkpoint import PartitionCheckpoints
from rnnstream.workers.scoring_partition import LoadedModel, ScoringPartition
from rnnstream.workers.worker_clients import WorkerClients
from rnnstream.workers.worker_metrics import WorkerMetrics

_log = logging.getLogger(__name__)


class OwnedPartitions:
    """Partition number -> :class:`ScoringPartition`, plus the operations on all of them."""

    def __init__(
        self, checkpoints: PartitionCheckpoints, metrics: WorkerMetrics, key_ttl_ms: int | None
    ) -> None:
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.key_ttl_ms = key_ttl_ms
        self._parts: dict[int, ScoringPartition] = {}
        self.writer = CheckpointWriter(checkpoints)
        self._copy_ms: dict[int, float] = {}

    def __iter__(self) -> Iterator[int]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __contains__(self, p: object) -> bool:
        return p in self._parts

    def __getitem__(self, p: int) -> ScoringPartition:
        return self._parts[p]

    def get(self, p: int) -> ScoringPartition | None:
        return self._parts.get(p)

    def values(self) -> ValuesView[ScoringPartition]:
        return self._parts.values()

    def items(self) -> ItemsView[int, ScoringPartition]:
        return self._parts.items()

    # ------------------------------------------------------------------------------------------- offsets

    def next_offsets(self) -> dict[int, int]:
        return {p: part.offsets.next_offset for p, part in self._parts.items()}

    def uncommitted_offsets(self) -> dict[int, int]:
        """Next offsets of the partitions with events applied past their committed offset."""
        return {p: part.offsets.next_offset for p, part in self._parts.items() if part.offsets.uncommitted}

    def mark_committed(self, offsets: Mapping[int, int] | None = None) -> None:
        """Record a commit: of ``offsets`` (partition -> next offset; what a commit started before the
        partitions moved on made durable), or of every partition's next offset."""
        for p, part in self._parts.items():
            if offsets is None:
                part.offsets.mark_committed()
            elif p in offsets:
                part.offsets.mark_committed(offsets[p])

    # ----------------------------------------------------------------------------------------- lifecycle

    def open(
        self, p: int, champion: LoadedModel, challenger: LoadedModel | None, clients: WorkerClients
    ) -> None:
        """Restore ``p`` from its newest checkpoint for the champion's version (seek with :meth:`apply`)."""
        log_start, committed = clients.positions(p)
        part, restored = ScoringPartition.open(
            p, champion, self.key_ttl_ms, self.checkpoints, log_start, committed
        )
        for skipped, why in restored.skipped:
            _log.warning(
                "partition %d: checkpoint %s is unreadable (%s); using the one before it",
                p,
                skipped.path,
                why,
            )
            self.metrics.count("checkpoint_fallbacks")
        if restored.info is not None:
            self.metrics.count("restores")
        if challenger is not None:
            part.attach_challenger(challenger)
        self._parts[p] = part

    def reopen_all(
        self, champion: LoadedModel, challenger: LoadedModel | None, clients: WorkerClients
    ) -> None:
        """Every owned partition again from its checkpoint (after a Kafka error), then :meth:`apply`."""
        self._collect(self.writer.wait)
        owned = sorted(self._parts)
        self._parts.clear()
        for p in owned:
            self.open(p, champion, challenger, clients)
        self.apply(clients)

    def apply(self, clients: WorkerClients) -> None:
        """Make the consumer read exactly the owned partitions, each from its next offset."""
        clients.assign(self.next_offsets())
        self.update_state_gauges()

    def release(self, partitions: list[int]) -> dict[int, int]:
        """Give up ``partitions`` (call with nothing uncommitted), each with a final checkpoint unless its
        newest one is current; returns their next offsets."""
        out = {}
        # a handover's checkpoint is complete before it returns
        self._collect(lambda: self.writer.wait(partitions))
        for p in sorted(set(partitions) & set(self._parts)):
            part = self._parts[p]
            if (
                part.offsets.next_offset > part.offsets.checkpoint_offset
                or self.checkpoints.latest(p, part.champion.version) is None
            ):
                self.checkpoint(part)
            out[p] = part.offsets.next_offset
            del self._parts[p]
            part.close()
        return out

    # --------------------------------------------------------------------------------------- checkpoints

    def checkpoint(self, part: ScoringPartition) -> None:
        """Checkpoint ``part`` now and wait until it is written (after its write in flight, if any)."""
        self._collect(lambda: self.writer.wait([part.partition]))
        t0 = time.perf_counter()
        part.snapshot(self.checkpoints)
        self.metrics.checkpoint((time.perf_counter() - t0) * 1000)
        self.update_state_gauges()

    def checkpoint_all(self) -> dict[int, int]:
        for part in self._parts.values():
            self.checkpoint(part)
        return self.next_offsets()

    def checkpoint_wanted(self, every_events: int, every_seconds: float) -> bool:
        """Some partition's checkpoint interval is up (whether or not it has uncommitted events): the loop
        then waits for its commit so that :meth:`checkpoint_due` finds a committed boundary."""
        now = time.monotonic()
        return any(
            not self.writer.writing(p) and part.offsets.interval_due(every_events, every_seconds, now)
            for p, part in self._parts.items()
        )

    def checkpoint_due(self, every_events: int, every_seconds: float) -> None:
        """Checkpoint each partition that is due (expired keys freed first: it changes no score): the copy
        here, the write in the background; a partition whose previous write is in flight waits for a later
        boundary. Writes that ended are collected first (a failed one is raised)."""
        self._collect(self.writer.finished)
        now, taken = time.monotonic(), False
        for p, part in self._parts.items():
            if self.writer.writing(p) or not part.offsets.checkpoint_due(every_events, every_seconds, now):
                continue
            self.metrics.count("evicted", part.sweep())
            t0 = time.perf_counter()
            prepared = part.prepare_snapshot(self.checkpoints)
            part.offsets.copied()
            self._copy_ms[p] = (time.perf_counter() - t0) * 1000
            self.writer.submit(prepared)
            taken = True
        if taken:
            self.update_state_gauges()

    def _collect(self, collect: Callable[[], list[WrittenCheckpoint]]) -> None:
        """Record the background writes ``collect`` returns; when some failed, record the ones that completed
        first, then raise (the worker resets to its checkpoints: a checkpoint lags, never leads)."""
        try:
            written = collect()
        except CheckpointWriteFailed as failed:
            self._settle(failed.written)
            for p in failed.failures:
                self._copy_ms.pop(p, None)
            raise
        self._settle(written)

    def _settle(self, written: list[WrittenCheckpoint]) -> None:
        """Record checkpoints whose background write completed (the owner's checkpoint offset, the time)."""
        for w in written:
            p = w.info.partition
            self.metrics.checkpoint(self._copy_ms.pop(p, 0.0) + w.write_ms)
            part = self._parts.get(p)
            if part is not None and part.champion.version == w.info.model_version:
                part.offsets.checkpoint_offset = max(part.offsets.checkpoint_offset, w.info.next_offset)

    def close(self) -> None:
        """Wait for the writes in flight (a failure is raised) and end the writer's thread."""
        try:
            self._collect(self.writer.wait)
        finally:
            self.writer.close()

    # ------------------------------------------------------------------------------------------ gauges

    def update_state_gauges(self) -> None:
        stores = [part.store for part in self._parts.values()]
        self.metrics.set_gauge("keys", sum(s.num_keys for s in stores))
        self.metrics.set_gauge("state_bytes", sum(s.nbytes for s in stores))
