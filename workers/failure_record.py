"""FailureRecord: what a scoring worker tells about its failures, and the backoff between its retries.

Only Kafka errors reset a worker to its checkpoints (bad input never raises); each one is recorded here so
``status()``, the status line and the metrics say that the worker keeps failing, since when, how often it
reset and with which last error. Retries wait a bounded exponential backoff.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

MAX_BACKOFF_S = 10.0
MAX_ERROR_CHARS = 500


class FailureRecord:
    """The last error, since when the current run of failures lasts, and how many resets succeeded."""

    def __init__(self) -> None:
        self.last_error: str | None = None
        self.failing_since: float | None = None  # wall time of the first failure of the current run
        self.resets = 0
        self.fenced = False

    @property
    def failing(self) -> bool:
        return self.failing_since is not None or self.fenced

    def note(self, line: str) -> None:
        """A problem worth showing that does not make the worker fail (a scoring error, a count mismatch)."""
        self.last_error = line[:MAX_ERROR_CHARS]

    def failed(self, exc: BaseException) -> None:
        """The loop failed with ``exc``: the run of failures starts now unless it already has."""
        self.note(f"{type(exc).__name__}: {exc}")
        self.failing_since = self.failing_since or time.time()

    def fence(self, exc: BaseException) -> None:
        self.fenced = True
        self.note(f"fenced: {exc}")

    def cycle_ok(self) -> None:
        self.failing_since = None

    def status(self) -> dict[str, Any]:
        return {
            "fenced": self.fenced,
            "last_error": self.last_error,
            "failing_for_s": None if self.failing_since is None else time.time() - self.failing_since,
            "resets": self.resets,
        }


def backoff_delays(first_s: float, max_s: float = MAX_BACKOFF_S) -> Iterator[float]:
    """``first_s``, doubling, at most ``max_s``, without end."""
    delay = first_s
    while True:
        yield delay
        delay = min(max_s, delay * 2)
