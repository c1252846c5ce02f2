"""CommitInFlight: a transaction's commit running on a thread of its own while the loop reads the next batch.

A commit is a few broker round trips (the offsets, the flush of the sends, EndTxn); kafka-python's calls wait
for them with the GIL released. Run on the loop thread, every event that arrives during a commit waits for
it before it is even fetched. So the worker hands the commit of transaction N to this object and, while it
runs, polls, decodes and scores batch N+1, holding its scores; only after :meth:`CommitInFlight.wait` returns
does it begin transaction N+1 and send them (one transaction at a time, the producer's rule).

Exactly once holds because nothing of batch N+1 reaches Kafka before N is committed, and a commit that
fails raises from :meth:`wait` on the loop thread: the worker then takes its usual failure path (abort,
reconnect, every partition back to its checkpoint, which is only ever taken at a committed boundary), so
the states batch N+1 moved are dropped with it and its events are read again.

While a commit is in flight the loop touches neither the producer nor the transaction object (the commit
thread owns both until :meth:`wait`); the consumer stays the loop's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class CommitDone:
    """A commit that went through: the offsets it made durable and when (``time.monotonic()``) it began,
    ended, and how long the loop waited for it."""

    offsets: dict[int, int]
    started: float
    ended: float
    waited_s: float


class CommitInFlight:
    """At most one commit at a time on one background thread."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-commit")
        self._future: Future[float] | None = None
        self._offsets: dict[int, int] = {}
        self._started = 0.0

    @property
    def pending(self) -> bool:
        """A commit was started and not yet collected by :meth:`wait`."""
        return self._future is not None

    def done(self) -> bool:
        """The commit in flight has ended (:meth:`wait` returns at once); False when none is."""
        return self._future is not None and self._future.done()

    def start(self, commit: Callable[[], None], offsets: Mapping[int, int], background: bool = True) -> None:
        """Run ``commit()`` (which makes ``offsets`` durable with the open transaction) in the background, or
        here and now when not ``background`` (:meth:`wait` then returns or raises its outcome at once)."""
        if self._future is not None:
            raise RuntimeError("a commit is already in flight")
        self._offsets = dict(offsets)
        self._started = time.monotonic()

        def run() -> float:
            commit()
            return time.monotonic()

        if background:
            self._future = self._pool.submit(run)
            return
        fut: Future[float] = Future()
        try:
            fut.set_result(run())
        except Exception as exc:
            fut.set_exception(exc)
        self._future = fut

    def wait(self) -> CommitDone:
        """Wait for the commit in flight and return what it committed; raises what the commit raised."""
        if self._future is None:
            raise RuntimeError("no commit in flight")
        fut, self._future = self._future, None
        t0 = time.monotonic()
        ended = fut.result()  # the commit's own deadlines (commit_timeout_ms) bound this wait
        return CommitDone(self._offsets, self._started, ended, max(0.0, time.monotonic() - t0))

    def abandon(self) -> BaseException | None:
        """After a failure elsewhere: wait for the commit in flight to end (its outcome no longer matters:
        the worker resets to its checkpoints and the offsets the broker has); returns its error, if any."""
        if self._future is None:
            return None
        fut, self._future = self._future, None
        try:
            fut.result()
        except Exception as exc:  # reported to the caller, which is resetting anyway
            return exc
        return None

    def close(self) -> None:
        self.abandon()
        self._pool.shutdown(wait=True)
