"""The worker's own Prometheus endpoint for its per-partition series (what Ray's metrics cannot do).

A ``ray.util.metrics.Gauge`` can only be set: Ray's core worker re-exports every tag set it ever saw, so the
lag series of a partition the worker released would stay on Ray's endpoint with its last value. Here a
``prometheus_client`` collector builds the series at scrape time from the worker's current numbers, so a
series exists exactly while the worker owns its partition:

- ``rnnstream_lag{pipeline,worker,partition}``: events behind the partition's end (broker end offsets, see
  :mod:`partition_lag`); absent while the broker does not answer;
- ``rnnstream_lag_age_seconds{pipeline,worker}``: seconds since lag was last read from the broker (grows
  while the broker does not answer);
- ``rnnstream_partition_events_total``, ``rnnstream_partition_scored_total``,
  ``rnnstream_partition_dead_lettered_total{pipeline,worker,partition}``: counts since this worker opened
  the partition (in == scored + dead-lettered + replayed is checked by the worker itself).

The worker-wide counters, gauges and histograms stay in :mod:`worker_metrics` (Ray's endpoint,
``ray_rnnstream_*``). Port: ``WorkerConfig.metrics_port`` + the worker's slot, or any free port for 0; the
bound port is in the worker's status (``metrics_port``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PARTITION_COUNTS = {  # series name -> (key in ScoringPartition.counts, help)
    "events": ("in", "events consumed from the partition (valid and rejected)"),
    "scored": ("scored", "scores written for the partition's events"),
    "dead_lettered": ("dead_lettered", "the partition's events sent to the dead-letter topic"),
}


@dataclass(frozen=True)
class PartitionNumbers:
    """What the endpoint shows, as the worker has it now (built on every scrape)."""

    tags: dict[str, str]
    lag: dict[int, int]  # owned partitions whose lag the broker reported on the last read
    lag_age_s: float | None
    counts: dict[int, dict[str, int]] = field(default_factory=dict)  # owned partition -> counts


class PartitionSeriesCollector:
    """A ``prometheus_client`` collector whose series are the owned partitions of one worker."""

    def __init__(self, numbers: Callable[[], PartitionNumbers]) -> None:
        self._numbers = numbers

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        n = self._numbers()
        names = list(n.tags)
        values = list(n.tags.values())
        lag = GaugeMetricFamily(
            "rnnstream_lag", "events behind the partition's end", labels=[*names, "partition"]
        )
        for p, v in sorted(n.lag.items()):
            lag.add_metric([*values, str(p)], float(v))
        yield lag
        age = GaugeMetricFamily(
            "rnnstream_lag_age_seconds", "seconds since lag was last read from the broker", labels=names
        )
        if n.lag_age_s is not None:
            age.add_metric(values, float(n.lag_age_s))
        yield age
        for name, (key, doc) in PARTITION_COUNTS.items():
            fam = CounterMetricFamily(f"rnnstream_partition_{name}", doc, labels=[*names, "partition"])
            for p, counts in sorted(n.counts.items()):
                fam.add_metric([*values, str(p)], float(counts[key]))
            yield fam


class PartitionMetricsEndpoint:
    """An HTTP ``/metrics`` server (a daemon thread) over one :class:`PartitionSeriesCollector`."""

    def __init__(self, numbers: Callable[[], PartitionNumbers], port: int, addr: str = "0.0.0.0") -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(PartitionSeriesCollector(numbers))
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:  # e.g. a stopped old incarnation still holds the port: take a free one
            if port == 0:
                raise
            log.warning("metrics port %d is taken (%s); serving partition series on a free port", port, exc)
            self._server, self._thread = start_http_server(0, addr=addr, registry=registry)
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
