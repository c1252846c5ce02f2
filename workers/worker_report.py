"""WorkerReport: what a scoring worker tells other threads, without touching its loop.

The loop thread owns the partitions and the Kafka clients; status calls (Ray methods), the lag watcher and
the Prometheus endpoint run on other threads. So the loop *publishes* the partitions it owns after every
change (:meth:`WorkerReport.publish`: a new dict, swapped in whole), and every report is built from that
snapshot, the worker's plain counters, its :class:`FailureRecord` and the latest :class:`LagReading`:

- :meth:`status`: cheap, lock-free (``rnnstream status``, the coordinator's health rounds);
- :meth:`metrics_snapshot`: status plus the counters, latencies and per-partition counts;
- the per-partition Prometheus series (:mod:`partition_metrics_endpoint`), on ``WorkerConfig.metrics_port``
  + slot (any free port for 0, none for None);
- the lag watcher's positions (:mod:`partition_lag`).

Lag is shown only for partitions owned now and only from the last successful broker read; when the broker
does not answer, ``lag_error`` says so and ``lag_age_s`` grows.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from rnnstream.workers.failure_record import FailureRecord
from rnnstream.workers.owned_partitions import OwnedPartitions
from rnnstream.workers.partition_lag import LagReading, LagWatch, Positions
from rnnstream.workers.partition_metrics_endpoint import PartitionMetricsEndpoint, PartitionNumbers
from rnnstream.workers.scoring_partition import ScoringPartition
from rnnstream.workers.served_models import ServedModels
from rnnstream.workers.worker_config import WorkerConfig
from rnnstream.workers.worker_metrics import WorkerMetrics


class WorkerReport:
    """Status, metrics and lag of one worker incarnation, readable from any thread."""

    def __init__(
        self,
        slot: int,
        config: WorkerConfig,
        models: ServedModels,
        health: FailureRecord,
        metrics: WorkerMetrics,
        loop_alive: Callable[[], bool],
    ) -> None:
        self.slot = slot
        self.name = f"worker-{slot}"
        self.incarnation = uuid.uuid4().hex[:12]
        self.heartbeat = time.time()
        self._tags = {"pipeline": config.pipeline, "worker": self.name}
        self._models = models
        self._health = health
        self._metrics = metrics
        self._loop_alive = loop_alive
        self._owned: dict[int, ScoringPartition] = {}
        self.lag = LagWatch(
            config, self.positions, config.lag_every_s, self.name, self._export_lag, config.stall_after_s
        )
        self.endpoint: PartitionMetricsEndpoint | None = None
        if config.metrics_port is not None:
            port = config.metrics_port + slot if config.metrics_port > 0 else 0
            self.endpoint = PartitionMetricsEndpoint(self.partition_numbers, port)

    def beat(self) -> None:
        self.heartbeat = time.time()

    def publish(self, parts: OwnedPartitions) -> None:
        """The loop owns ``parts`` now (call from the loop thread after every change)."""
        self._owned = dict(parts.items())

    def positions(self) -> tuple[Positions, bool]:
        """(Next, committed) offset of each owned partition, and whether the loop runs without failing."""
        healthy = self._loop_alive() and not self._health.failing
        owned = self._owned.items()
        return {p: (part.offsets.next_offset, part.offsets.committed) for p, part in owned}, healthy

    def _export_lag(self, reading: LagReading) -> None:
        """Worker-wide lag gauges on Ray's endpoint: the total of the owned partitions (kept while the broker
        does not answer) and its age, which grows then."""
        st = self.status()
        if reading.error is None:
            self._metrics.set_gauge("lag_total", st["lag_total"])
        if st["lag_age_s"] is not None:
            self._metrics.set_gauge("lag_age_s", st["lag_age_s"])

    def status(self) -> dict[str, Any]:
        owned = self._owned
        reading = self.lag.reading
        lag = {p: n for p, n in reading.lag.items() if p in owned}
        return {
            "slot": self.slot,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "partitions": sorted(owned),
            **self._models.status(),
            "alive": self._loop_alive(),
            "heartbeat_age_s": time.time() - self.heartbeat,
            **self._health.status(),
            **reading.status(),
            "lag": lag,
            "lag_total": int(sum(lag.values())),
            "metrics_port": None if self.endpoint is None else self.endpoint.port,
        }

    def partition_counts(self) -> dict[int, dict[str, int]]:
        return {p: dict(part.counts) for p, part in self._owned.items()}

    def metrics_snapshot(self) -> dict[str, Any]:
        return {**self._metrics.snapshot(), **self.status(), "partition_counts": self.partition_counts()}

    def partition_numbers(self) -> PartitionNumbers:
        st = self.status()
        return PartitionNumbers(self._tags, st["lag"], st["lag_age_s"], self.partition_counts())

    def close(self) -> None:
        self.lag.close()
        if self.endpoint is not None:
            self.endpoint.close()
