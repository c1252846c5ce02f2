"""The demo's progress display: one tqdm bar per stage of the current pipeline, messages printed above it."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm


class DemoProgress:
    """``say(message)`` prints a line (with the elapsed time); ``bar(stage, done, total)`` moves the bar."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self._bar: tqdm | None = None
        self._stage: str | None = None
        self._pipeline = ""

    def __enter__(self) -> DemoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def say(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:5.0f}s] {message}"
        if self._bar is not None:
            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def start_pipeline(self, name: str) -> None:
        self._close()
        self._pipeline = name
        self.say(f"=== {name}")

    def bar(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self._stage or self._bar is None:
            self._close()
            self._stage = stage
            self._bar = tqdm(
                total=total, desc=f"{self._pipeline}: {stage}", unit="ev", unit_scale=True, leave=False,
                file=sys.stderr, dynamic_ncols=True,
            )  # fmt: skip
        self._bar.total = max(total, done)
        self._bar.n = done
        self._bar.refresh()
        if done >= total:  # stage finished: later messages print on clean lines
            self._close()

    @contextlib.contextmanager
    def waiting(self, stage: str) -> Iterator[None]:
        """An elapsed-time bar for a stage whose progress is not known (e.g. a Ray Train run)."""
        if not self.enabled:
            yield
            return
        self._close()
        bar = tqdm(
            desc=f"{self._pipeline}: {stage}", bar_format="{desc}: {elapsed}", leave=False, file=sys.stderr
        )
        self._bar = bar
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None
