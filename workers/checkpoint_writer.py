"""CheckpointWriter: partition checkpoints written on one background thread, so the loop keeps scoring.

The loop takes the snapshot (:meth:`PartitionCheckpoints.prepare`: a copy of the states at a committed batch
boundary, with that offset) and hands it here; one thread serializes and writes it (temp name + rename, or one
upload: visible only once whole) and prunes the older ones. Writing on the loop stopped every fetch and score
for as long as the storage took (14.6 ms at most on a quiet machine, up to 2 s under load).

At most one write per partition is in flight. When the next checkpoint is due while the previous one still
writes, the loop skips it (the partition stays due and is checkpointed at a later boundary) instead of
waiting: waiting would stall the loop exactly as the synchronous write did, and a skipped checkpoint only
means a longer replay after a crash, as with a less frequent checkpoint. A crash mid-write leaves the
previous complete checkpoint, from which recovery replays as before.

A failed write is raised on the loop thread when it is collected (:meth:`finished`, :meth:`wait`), where a
synchronous write's error was raised, so it reaches the worker's health the same way (the worker resets to its
checkpoints, and the partition is checkpointed again at a later boundary: a checkpoint lags, never leads).
When several writes are collected at once, one :class:`CheckpointWriteFailed` names every failed partition
with its reason and carries the writes that did complete, so the caller records those before it handles
the failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

from rnnstream.workers.partition_checkpoint import CheckpointInfo, PartitionCheckpoints, PreparedCheckpoint


@dataclass(frozen=True)
class WrittenCheckpoint:
    """A checkpoint now complete in storage, and how long its write took (ms, off the loop)."""

    info: CheckpointInfo
    write_ms: float


class CheckpointWriteFailed(RuntimeError):
    """Collected writes that failed (partition -> the checkpoint and its error), and ``written``: the ones
    collected with them that completed (each a complete checkpoint in storage, to be recorded)."""

    def __init__(
        self, failures: dict[int, tuple[CheckpointInfo, BaseException]], written: list[WrittenCheckpoint]
    ) -> None:
        self.failures = failures
        self.written = written
        reasons = "; ".join(
            f"partition {p} at offset {info.next_offset}: {type(exc).__name__}: {exc}"
            for p, (info, exc) in sorted(failures.items())
        )
        super().__init__(f"checkpoint write failed: {reasons}")


class CheckpointWriter:
    """Writes prepared checkpoints on one background thread; every other method is for the loop thread."""

    def __init__(self, checkpoints: PartitionCheckpoints) -> None:
        self.checkpoints = checkpoints
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._in_flight: dict[int, tuple[CheckpointInfo, Future[WrittenCheckpoint]]] = {}

    def writing(self, partition: int) -> bool:
        """True while a checkpoint of ``partition`` is being written (or waits for the thread)."""
        return partition in self._in_flight

    def submit(self, prepared: PreparedCheckpoint) -> None:
        p = prepared.info.partition
        if p in self._in_flight:
            raise RuntimeError(f"partition {p}: a checkpoint is already being written")
        self._in_flight[p] = (prepared.info, self._pool.submit(self._write, prepared))

    def _write(self, prepared: PreparedCheckpoint) -> WrittenCheckpoint:
        t0 = time.perf_counter()
        info = self.checkpoints.write_prepared(prepared)
        return WrittenCheckpoint(info, (time.perf_counter() - t0) * 1000)

    def finished(self) -> list[WrittenCheckpoint]:
        """The writes that ended since the last call (none is in flight any more); when any failed,
        :class:`CheckpointWriteFailed` is raised with every failure and the completed ones."""
        return self._collect([p for p, (_, f) in self._in_flight.items() if f.done()])

    def wait(self, partitions: Iterable[int] | None = None) -> list[WrittenCheckpoint]:
        """Wait for the writes of ``partitions`` (None: all) and collect them (see :meth:`finished`)."""
        ps = list(self._in_flight) if partitions is None else [p for p in partitions if p in self._in_flight]
        wait_futures([self._in_flight[p][1] for p in ps])
        return self._collect(ps)

    def _collect(self, partitions: list[int]) -> list[WrittenCheckpoint]:
        written: list[WrittenCheckpoint] = []
        failures: dict[int, tuple[CheckpointInfo, BaseException]] = {}
        for p in sorted(partitions):
            info, future = self._in_flight.pop(p)
            exc = future.exception()
            if exc is None:
                written.append(future.result())
            else:
                failures[p] = (info, exc)
        if failures:
            raise CheckpointWriteFailed(failures, written) from next(iter(failures.values()))[1]
        return written

    def close(self) -> None:
        """Wait for every write (failures are raised, see :meth:`finished`), then end the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
