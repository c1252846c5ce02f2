"""How busy the machine's CPUs were while a latency run's events were sent: the context a p99 needs.

On the 2-core machine the scored latency's tail is CPU queueing, not work of the worker's own: in traced runs
at 10,000 events/s (README, "Where the p99 at 10,000 events/s comes from") 1.6-1.97 of the 2 cores were in use
while the measured events were sent, ~1.5 of them the run itself (the two workers ~0.9 of a core, the paced
sender and the score reader ~0.4-0.55, the broker ~0.15), and a worker's loop thread waited in the run
queue 0.7-2.8x as long as it ran. The bare broker round trip is measured on its own afterwards (a sender, the
broker and one consumer), so its p99 and the scored p99 may be taken under different loads; these figures say
how different.

:class:`CpuWindow` takes the machine's CPU times (``psutil.cpu_times``) and, optionally, some processes'
CPU times around a block; :meth:`CpuWindow.busy` is the share of all cores busy at normal priority over it
(niced work, which yields to it, left out), :meth:`CpuWindow.cores` the processes' CPU seconds a wall second
(processes gone meanwhile count up to their last reading).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil


def _busy_total(t) -> tuple[float, float]:
    """(CPU seconds busy at normal priority, CPU seconds in all) since boot: niced work (a shared machine's
    background jobs, Ray's idle workers at nice 15) yields to normal-priority threads, so it is left out of
    busy; guest time is already inside user time."""
    f = t._asdict()
    busy = sum(f.get(k, 0.0) for k in ("user", "system", "irq", "softirq", "steal"))
    total = busy + sum(f.get(k, 0.0) for k in ("nice", "idle", "iowait"))
    return busy, total


class CpuWindow:
    """``with CpuWindow(pids) as w: ...`` then ``w.busy()`` and ``w.cores()``."""

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self._procs = []
        for pid in pids:
            try:
                self._procs.append(psutil.Process(pid))
            except psutil.Error:
                continue
        self._cpu0: dict[int, float] = {}
        self._cpu1: dict[int, float] = {}
        self._t = (0.0, 0.0)
        self._machine = ((0.0, 0.0), (0.0, 0.0))

    def _proc_cpu(self) -> dict[int, float]:
        out = {}
        for p in self._procs:
            try:
                out[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
        return out

    def __enter__(self) -> CpuWindow:
        self._cpu0 = self._proc_cpu()
        self._t = (time.monotonic(), 0.0)
        self._machine = (_busy_total(psutil.cpu_times()), (0.0, 0.0))
        return self

    def __exit__(self, *exc) -> None:
        self._machine = (self._machine[0], _busy_total(psutil.cpu_times()))
        self._t = (self._t[0], time.monotonic())
        self._cpu1 = self._proc_cpu()

    def busy(self) -> float:
        """The share of all cores busy at normal priority over the block (0..1)."""
        (b0, t0), (b1, t1) = self._machine
        # the two differences are sums of the same float counters: with no idle tick between them their
        # ratio can land a rounding step above 1 (1.0000000001 on a machine kept busy by other processes)
        return min(1.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0

    def cores(self) -> float:
        """The processes' CPU seconds a wall second over the block."""
        wall = self._t[1] - self._t[0]
        used = sum(self._cpu1[p] - self._cpu0[p] for p in self._cpu1 if p in self._cpu0)
        return used / wall if wall > 0 else 0.0
