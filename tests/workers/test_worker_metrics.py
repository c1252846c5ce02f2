"""The worker's Prometheus series, scraped from the Ray node's metrics endpoint as Prometheus would."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

import ray as _ray
from prometheus_client.parser import text_string_to_metric_families

from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.serving import start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import make_events, wait_for, worker_config


def scrape(pipeline: str) -> dict[str, dict[tuple, float]]:
    """``{series name: {(worker, partition): value}}`` of the pipeline's rnnstream series on this node."""
    node = next(n for n in _ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = sample.labels
            if sample.name.startswith("ray_rnnstream_") and labels.get("pipeline") == pipeline:
                key = (labels.get("worker"), labels.get("partition"))
                out[sample.name.removeprefix("ray_")][key] = sample.value
    return out


def test_prometheus_series_carry_the_worker_counts(new_stream, ray_local, tmp_path):
    settings, pipeline, schema, _, handle = new_stream("prom", 2)
    events = make_events(schema, 1200, 40, seed=21)
    with EventProducer(settings, schema) as producer:
        producer.send_json(events)
        for i in range(3):
            producer.send_raw(b"{not json", key=b"bad-%d" % i)
        producer.flush()
    config = worker_config(settings, schema, tmp_path / "ckpt", key_ttl_seconds=2.0, lag_every_s=0.2)
    coord = start_coordinator(config, handle, 1, 2)
    try:
        wait_for(lambda: committed_all(settings, config), 60, "all events committed")

        def exported() -> bool:
            s = scrape(pipeline)
            return (
                sum(s.get("rnnstream_scored_total", {}).values()) == 1200
                and sum(s.get("rnnstream_dead_lettered_total", {}).values()) == 3
                and set(s.get("rnnstream_lag", {})) == {("worker-0", "0"), ("worker-0", "1")}
                and all(v == 0 for v in s["rnnstream_lag"].values())
            )

        wait_for(exported, 60, "the worker's series in the Prometheus endpoint", every_s=1.0)
        series = scrape(pipeline)
        worker = _ray.get(coord.status.remote(), timeout=30)["workers"][0]
    finally:
        stop_coordinator(coord)
    assert sum(series["rnnstream_events_total"].values()) == 1203 == worker["events"]
    assert sum(series["rnnstream_evicted_keys_total"].values()) == worker["evicted"] > 0
    assert sum(series["rnnstream_keys"].values()) == worker["keys"] > 0
