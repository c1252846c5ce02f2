"""LoopCalls: control calls run on a worker's loop thread, between its cycles.

kafka-python clients are not thread safe, so a worker's one loop thread does everything Kafka; a control call
from another thread (a Ray method: assign, release, swap, stop) is queued here with a future and run by the
loop when it is between cycles. While the worker cannot reach Kafka it answers a stop at once and fails the
other calls with the reason, so no caller hangs.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class LoopCalls:
    """A queue of (callable, args, future) for one loop thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple, Future]] = queue.Queue()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 120.0) -> Any:
        """Queue ``fn(*args)`` for the loop thread and wait for its result (from another thread)."""
        fut: Future = Future()
        self._queue.put((fn, args, fut))
        return fut.result(timeout=timeout)

    def run_pending(self, wait_s: float = 0.0, reraise: tuple[type[BaseException], ...] = ()) -> None:
        """Run every queued call (waiting up to ``wait_s`` for the first); an exception of a ``reraise``
        type is passed to the caller's future and raised in the loop too (e.g. the worker was fenced)."""
        first = True
        while True:
            try:
                item = self._queue.get(timeout=wait_s) if first and wait_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                return
            first = False
            fn, args, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except reraise as exc:
                fut.set_exception(RuntimeError(f"the worker stopped: {exc}"))
                raise
            except Exception as exc:
                fut.set_exception(exc)

    def refuse(self, why: str, stop: Callable[..., Any], stop_now: Callable[[], Any]) -> None:
        """While the loop cannot do its work: answer calls of ``stop`` with ``stop_now()`` (a stop that
        needs no Kafka), fail every other call with ``why``."""
        while True:
            try:
                fn, _, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if fn == stop:
                fut.set_result(stop_now())
            else:
                fut.set_exception(RuntimeError(why))
