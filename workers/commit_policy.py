"""When a scoring worker commits its transaction: the loop's timing policy.

With exactly once, a score is visible to ``read_committed`` readers only once its transaction commits, so
the commit cadence bounds latency from below; each commit costs a few broker round trips, so committing
after every tiny batch under load costs throughput. The policy adapts to the input:

- **keeping up** (the last fetch saw nothing past what is scored, and the batch was not full): commit as
  soon as the batch in hand is scored (after ``min_commit_interval_ms``, 0 by default);
- **behind**: keep scoring batches into the open transaction, committing at least every
  ``commit_interval_ms`` (no score waits longer than that for its commit), or sooner when
  ``max_in_flight`` events wait (the worker's backpressure, kept by the loop).

A batch that will end in a commit attaches the offsets it reaches to the transaction *before* it is scored
(:meth:`ScoresTransaction.offer_offsets`), so the group coordinator's round trips overlap the scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from rnnstream.workers.worker_config import WorkerConfig

IDLE_POLL_MS = 50  # longest wait for a first message with nothing open (the loop serves control calls then)


def offsets_after(next_offsets: Mapping[int, int], by_partition: Mapping[int, list]) -> dict[int, int]:
    """Each partition's next offset once the polled messages (in offset order) are applied; partitions not
    in ``next_offsets`` (not owned) are left out."""
    out = dict(next_offsets)
    for p, msgs in by_partition.items():
        if p in out and msgs:
            out[p] = max(out[p], msgs[-1].offset + 1)
    return out


class CommitPolicy:
    """Decides, from what a cycle polled and the open transaction's age, whether the cycle commits."""

    def __init__(self, config: WorkerConfig) -> None:
        self.max_batch_events = int(config.max_batch_events)
        self.commit_interval_ms = float(config.commit_interval_ms)
        self.min_commit_interval_ms = float(config.min_commit_interval_ms)

    def due(self, polled: int, caught_up: Callable[[], bool], age_ms: float) -> bool:
        """Commit now? ``polled``: messages this cycle; ``caught_up()``: nothing known past the offsets the
        batch reaches (asked only when the age alone does not decide); ``age_ms``: the transaction's age."""
        if age_ms >= self.commit_interval_ms:
            return True
        if age_ms < self.min_commit_interval_ms or polled >= self.max_batch_events:
            return False  # a full batch: more is waiting
        return caught_up()

    def poll_wait_ms(self, tx_open: bool, tx_started: float) -> int:
        """How long the next poll may wait for a first message: never past the moment the open
        transaction is due."""
        if not tx_open:
            return IDLE_POLL_MS
        due = tx_started + min(self.commit_interval_ms, self.min_commit_interval_ms) / 1000
        return max(0, min(IDLE_POLL_MS, int((due - time.monotonic()) * 1000)))
