"""OwnedPartitions: the partitions a scoring worker owns, with their checkpoints and state gauges.

Opened from their newest checkpoints (the restore is counted), checkpointed when due (after freeing expired
keys) or when released, each with its :class:`PartitionOffsets`; the keys and state-bytes gauges follow what
is owned now. (Lag is read from the broker apart from the worker's clients: :mod:`partition_lag`.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import ItemsView, Iterator, ValuesView

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

    def mark_committed(self) -> None:
        for part in self._parts.values():
            part.offsets.mark_committed()

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
        t0 = time.perf_counter()
        part.snapshot(self.checkpoints)
        self.metrics.checkpoint((time.perf_counter() - t0) * 1000)
        self.update_state_gauges()

    def checkpoint_all(self) -> dict[int, int]:
        for part in self._parts.values():
            self.checkpoint(part)
        return self.next_offsets()

    def checkpoint_due(self, every_events: int, every_seconds: float) -> None:
        """Checkpoint each partition that is due (expired keys freed first: it changes no score)."""
        now = time.monotonic()
        for part in self._parts.values():
            if part.offsets.checkpoint_due(every_events, every_seconds, now):
                self.metrics.count("evicted", part.sweep())
                self.checkpoint(part)

    # ------------------------------------------------------------------------------------------ gauges

    def update_state_gauges(self) -> None:
        stores = [part.store for part in self._parts.values()]
        self.metrics.set_gauge("keys", sum(s.num_keys for s in stores))
        self.metrics.set_gauge("state_bytes", sum(s.nbytes for s in stores))
