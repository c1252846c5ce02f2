"""A scoring worker's metrics: exported with ``ray.util.metrics`` (Prometheus scrapes them from Ray) and kept
as plain numbers too, so ``rnnstream status`` can print them per worker without a Prometheus.

Counters: events, dead-lettered, scored, replayed (state updated, nothing emitted), evicted keys, restores,
checkpoints, Kafka errors, resets to checkpoints, scoring errors, pauses. Gauges: keys held, state bytes,
paused, lag of all owned partitions and its age (seconds since the broker last answered). Per-partition
series (lag, counts) are not here: a Ray gauge cannot drop the series of a released partition, so the worker
serves them itself (:mod:`partition_metrics_endpoint`). Histograms: batch size,
checkpoint duration, latency event time -> score written and broker append -> score written. The local copy
keeps the latest latencies in a fixed ring (no growth) for p50/p99, and two more rings that split the latency
(local only): ``fetch`` (a message's create time -> the loop polled it: the broker hop and the wait behind the
loop's cycle; the oldest and newest message of each partition a poll) and ``commit`` (how long each
transaction commit blocked the loop: offsets, flush and EndTxn round trips); and each checkpoint's duration
(the loop writes checkpoints itself: ``checkpoint_max_ms`` is the longest stall they caused).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 60000]
BATCH_BOUNDARIES = [1, 8, 32, 128, 512, 2048, 8192, 32768]
CHECKPOINT_BOUNDARIES_MS = [1, 5, 10, 50, 100, 500, 1000, 5000, 20000]
LATENCY_RING = 8192


class _RayMetrics:
    """The ``ray.util.metrics`` objects (only made inside a Ray worker process)."""

    def __init__(self, tag_keys: tuple[str, ...]) -> None:
        from ray.util import metrics as m

        def counter(name: str, desc: str) -> Any:
            return m.Counter(f"rnnstream_{name}", description=desc, tag_keys=tag_keys)

        def gauge(name: str, desc: str, extra: tuple[str, ...] = ()) -> Any:
            return m.Gauge(f"rnnstream_{name}", description=desc, tag_keys=tag_keys + extra)

        def hist(name: str, desc: str, bounds: list[float]) -> Any:
            return m.Histogram(f"rnnstream_{name}", description=desc, boundaries=bounds, tag_keys=tag_keys)

        self.counters = {
            "events": counter("events_total", "events consumed (valid and rejected)"),
            "dead_lettered": counter("dead_lettered_total", "events sent to the dead-letter topic"),
            "scored": counter("scored_total", "scores written"),
            "replayed": counter("replayed_total", "events replayed into state without emitting a score"),
            "evicted": counter("evicted_keys_total", "keys evicted by event-time TTL"),
            "restores": counter("restores_total", "partition checkpoints restored"),
            "checkpoint_fallbacks": counter(
                "checkpoint_fallbacks_total", "unreadable newest checkpoints skipped for an older one"
            ),
            "checkpoints": counter("checkpoints_total", "partition checkpoints written"),
            "kafka_errors": counter(
                "kafka_errors_total", "Kafka errors that reset the worker to its checkpoints"
            ),
            "pauses": counter("pauses_total", "times the worker paused its partitions (backpressure)"),
            "scoring_errors": counter(
                "scoring_errors_total", "events whose scoring raised (dead-lettered) and challengers dropped"
            ),
            "resets": counter("resets_total", "times the worker reset its partitions to their checkpoints"),
        }
        self.gauges = {
            "keys": gauge("keys", "stream keys held in state"),
            "state_bytes": gauge("state_bytes", "bytes of recurrent state held"),
            "paused": gauge("paused", "1 while the worker holds its partitions paused (backpressure)"),
            "lag_total": gauge("lag_total", "events behind the owned partitions' ends (last broker read)"),
            "lag_age_s": gauge("lag_age_seconds", "seconds since lag was last read from the broker"),
        }
        self.hists = {
            "batch_size": hist("batch_size", "events per scored micro-batch", BATCH_BOUNDARIES),
            "checkpoint_ms": hist("checkpoint_ms", "partition checkpoint duration", CHECKPOINT_BOUNDARIES_MS),
            "latency_event_ms": hist(
                "latency_event_ms", "event time to score committed", LATENCY_BOUNDARIES_MS
            ),
            "latency_append_ms": hist(
                "latency_append_ms", "broker append to score committed", LATENCY_BOUNDARIES_MS
            ),
        }


class WorkerMetrics:
    """Counters, gauges and latency samples of one scoring worker (one instance per worker process)."""

    COUNTERS = (
        "events",
        "dead_lettered",
        "scored",
        "replayed",
        "evicted",
        "restores",
        "checkpoint_fallbacks",
        "checkpoints",
        "kafka_errors",
        "pauses",
        "scoring_errors",
        "resets",
    )

    def __init__(self, pipeline: str, worker: str, export: bool = True) -> None:
        self.tags = {"pipeline": pipeline, "worker": worker}
        self.counts: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.gauges: dict[str, float] = {"keys": 0, "state_bytes": 0, "paused": 0}
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (event, append) times of sent scores
        self.batches = 0
        self.batch_events = 0
        self.last_checkpoint_ms = 0.0
        self.last_commit_monotonic_s: float | None = None  # when the last commit returned (benchmarks)
        self.started = time.time()
        self._lat_event = np.zeros(LATENCY_RING, dtype=np.float64)
        self._lat_append = np.zeros(LATENCY_RING, dtype=np.float64)
        self._lat_n = 0
        self._fetch = _Ring()
        self._commit = _Ring()
        self._commit_wait = _Ring()
        self._checkpoint = _Ring()
        self._ray: _RayMetrics | None = None
        if export:
            try:
                self._ray = _RayMetrics(tuple(self.tags))
            except Exception:  # not inside Ray: keep the local numbers only
                self._ray = None

    def count(self, name: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.counts[name] += int(n)
        if self._ray is not None:
            self._ray.counters[name].inc(n, tags=self.tags)

    def set_gauge(self, name: str, value: float) -> None:
        self.gauges[name] = float(value)
        if self._ray is not None:
            self._ray.gauges[name].set(float(value), tags=self.tags)

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batch_events += int(size)
        if self._ray is not None:
            self._ray.hists["batch_size"].observe(float(size), tags=self.tags)

    def checkpoint(self, duration_ms: float) -> None:
        self.last_checkpoint_ms = float(duration_ms)
        self._checkpoint.add([float(duration_ms)])
        self.count("checkpoints")
        if self._ray is not None:
            self._ray.hists["checkpoint_ms"].observe(float(duration_ms), tags=self.tags)

    def scores_sent(self, event_times_ms: np.ndarray, append_times_ms: np.ndarray) -> None:
        """Scores were sent into the open transaction; their latencies count once it commits."""
        self._pending.append((event_times_ms, append_times_ms))

    def polled(self, create_times_ms: list[float]) -> None:
        """Messages the loop just polled (their create times): the fetch latency, create -> polled."""
        now_ms = time.time() * 1000
        self._fetch.add([now_ms - t for t in create_times_ms])

    def scores_committed(
        self, since: float | None = None, ended: float | None = None, waited_s: float | None = None
    ) -> None:
        """The open transaction committed; ``since``/``ended``: when the commit began and returned
        (monotonic; ``ended`` defaults to now), for ``commit``; ``waited_s``: how long the loop waited for
        it (a commit in the background overlaps the next batch), for ``commit_wait``."""
        mono = time.monotonic()
        self.last_commit_monotonic_s = mono if ended is None else ended
        if since is not None:
            self._commit.add([(self.last_commit_monotonic_s - since) * 1000])
        if waited_s is not None:
            self._commit_wait.add([waited_s * 1000])
        if self._pending:
            now_ms = (time.time() - (mono - self.last_commit_monotonic_s)) * 1000
            ev = np.concatenate([t for t, _ in self._pending])
            ap = np.concatenate([a for _, a in self._pending])
            self._pending.clear()
            self.latencies(now_ms - ev, now_ms - ap)

    def scores_aborted(self) -> None:
        self._pending.clear()

    def latencies(self, event_ms: np.ndarray, append_ms: np.ndarray) -> None:
        """Record latencies (ms) of scores just committed; the Ray histograms get a bounded sample."""
        n = len(event_ms)
        if n == 0:
            return
        take = min(n, LATENCY_RING)
        idx = (self._lat_n + np.arange(take)) % LATENCY_RING
        self._lat_event[idx] = event_ms[-take:]
        self._lat_append[idx] = append_ms[-take:]
        self._lat_n += take
        if self._ray is not None:
            step = max(1, n // 64)
            for a, b in zip(event_ms[::step], append_ms[::step], strict=True):
                self._ray.hists["latency_event_ms"].observe(float(a), tags=self.tags)
                self._ray.hists["latency_append_ms"].observe(float(b), tags=self.tags)

    def latency_samples(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self._lat_n, LATENCY_RING)
        return self._lat_event[:n].copy(), self._lat_append[:n].copy()

    def reset_latencies(self) -> None:
        self._lat_n = 0
        self._fetch = _Ring()
        self._commit = _Ring()
        self._commit_wait = _Ring()
        self._checkpoint = _Ring()

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers for ``rnnstream status`` and tests."""
        ev, ap = self.latency_samples()

        def pct(a: np.ndarray, q: float) -> float | None:
            return float(np.percentile(a, q)) if len(a) else None

        return {
            **self.tags,
            **self.counts,
            **self.gauges,
            "batches": self.batches,
            "mean_batch": (self.batch_events / self.batches) if self.batches else 0.0,
            "last_checkpoint_ms": self.last_checkpoint_ms,
            "last_commit_monotonic_s": self.last_commit_monotonic_s,
            "latency_event_p50_ms": pct(ev, 50),
            "latency_event_p99_ms": pct(ev, 99),
            "latency_fetch_p50_ms": pct(self._fetch.values(), 50),
            "latency_fetch_p99_ms": pct(self._fetch.values(), 99),
            "commit_p50_ms": pct(self._commit.values(), 50),
            "commit_p99_ms": pct(self._commit.values(), 99),
            "commit_wait_p99_ms": pct(self._commit_wait.values(), 99),
            "checkpoint_max_ms": pct(self._checkpoint.values(), 100),
            "latency_append_p50_ms": pct(ap, 50),
            "latency_append_p99_ms": pct(ap, 99),
            "uptime_s": time.time() - self.started,
        }


class _Ring:
    """The latest ``LATENCY_RING`` values (ms), fixed memory."""

    def __init__(self) -> None:
        self._v = np.zeros(LATENCY_RING, dtype=np.float64)
        self._n = 0

    def add(self, values: list[float]) -> None:
        for v in values[-LATENCY_RING:]:
            self._v[self._n % LATENCY_RING] = v
            self._n += 1

    def values(self) -> np.ndarray:
        return self._v[: min(self._n, LATENCY_RING)].copy()
