"""Samples the coordinator's status in a thread of its own while the demo serves: events scored over time,
counted across worker restarts (a restarted worker's counters begin again at zero)."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Any

SAMPLE_EVERY_S = 0.5


class StatusMonitor:
    """Samples the coordinator's status in its own thread: events scored so far (restart-aware) over time."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator
        self.samples: list[tuple[float, int]] = []  # (monotonic time, events scored so far)
        self._base: dict[int, int] = {}
        self._seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-status", daemon=True)

    def start(self) -> StatusMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def status(self) -> dict[str, Any]:
        """The coordinator's status now (any thread; not recorded)."""
        import ray

        return ray.get(self.coordinator.status.remote(), timeout=30)

    def _record(self, st: dict[str, Any]) -> None:
        total = 0
        for w in st.get("workers", []):
            slot = int(w.get("slot", -1))
            if "error" in w:  # restarting: count what it had scored before
                total += self._base.get(slot, 0) + self._seen.get(slot, 0)
                continue
            scored = int(w.get("scored", 0))
            if scored < self._seen.get(slot, 0):  # a new process: its counters began again
                self._base[slot] = self._base.get(slot, 0) + self._seen[slot]
            self._seen[slot] = scored
            total += self._base.get(slot, 0) + scored
        self.samples.append((time.monotonic(), total))

    def _run(self) -> None:
        while True:
            # A status call during a restart may time out: sample again next round.
            with contextlib.suppress(Exception):
                self._record(self.status())
            if self._stop.wait(SAMPLE_EVERY_S):
                return

    def rates(self, origin: float) -> list[tuple[float, float]]:
        """(seconds since ``origin``, events/s over the previous sampling interval)."""
        out = []
        for (t0, n0), (t1, n1) in itertools.pairwise(self.samples):
            if t1 - t0 >= SAMPLE_EVERY_S / 2:
                out.append((t1 - origin, max(0.0, (n1 - n0) / (t1 - t0))))
        return out
