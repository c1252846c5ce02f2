"""The worker's Prometheus series, scraped as Prometheus would: the worker-wide ones from the Ray node's
metrics endpoint, the per-partition ones (lag, counts) from each worker's own endpoint, where a partition's
series exists only while the worker owns it."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from typing import Any

import ray as _ray
from prometheus_client.parser import text_string_to_metric_families

from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.serving import start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import answered_status, make_events, produce, wait_for, worker_config


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


def scrape_worker(port: int) -> dict[str, dict[str, float]]:
    """``{series name: {partition: value}}`` of a worker's own endpoint (the worker runs on this node)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[sample.name][sample.labels.get("partition", "")] = sample.value
    return out


def workers_by_slot(coord: Any) -> dict[int, dict]:
    return {w["slot"]: w for w in answered_status(coord)["workers"]}


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
                and s.get("rnnstream_lag_total", {}).get(("worker-0", None)) == 0
            )

        wait_for(exported, 60, "the worker's series in the Prometheus endpoint", every_s=1.0)
        seen: dict[str, Any] = {}

        def agree() -> bool:  # Ray exports every few seconds, and idle keys keep expiring: wait for a match
            seen["series"], seen["worker"] = scrape(pipeline), workers_by_slot(coord)[0]
            s, w = seen["series"], seen["worker"]
            return (
                sum(s["rnnstream_evicted_keys_total"].values()) == w["evicted"]
                and sum(s["rnnstream_keys"].values()) == w["keys"]
            )

        wait_for(agree, 60, "Ray's series to agree with the worker's numbers", every_s=1.0)
        series, worker = seen["series"], seen["worker"]
        port0 = worker["metrics_port"]
        wait_for(lambda: scrape_worker(port0)["rnnstream_lag"] == {"0": 0, "1": 0}, 30, "lag of both")
        own = scrape_worker(port0)

        # a second worker takes one partition: worker-0's series of it disappear, worker-1's appear
        _ray.get(coord.scale.remote(2), timeout=120)
        ws = workers_by_slot(coord)
        (kept,), (moved,) = ws[0]["partitions"], ws[1]["partitions"]
        produce(settings, schema, make_events(schema, 300, 40, seed=22))
        wait_for(lambda: committed_all(settings, config), 60, "the new events committed")

        def moved_over() -> bool:
            a, b = scrape_worker(port0), scrape_worker(workers_by_slot(coord)[1]["metrics_port"])
            return a["rnnstream_lag"] == {str(kept): 0} and b["rnnstream_lag"] == {str(moved): 0}

        wait_for(moved_over, 30, "the moved partition's lag series on its new owner only")
        after = scrape_worker(port0)
    finally:
        stop_coordinator(coord)
    assert sum(series["rnnstream_events_total"].values()) == 1203 == worker["events"]
    assert sum(series["rnnstream_evicted_keys_total"].values()) == worker["evicted"] > 0
    assert sum(series["rnnstream_keys"].values()) == worker["keys"] > 0
    assert "rnnstream_lag" not in series  # no Ray gauge per partition: it could never drop a released one
    assert series["rnnstream_lag_age_seconds"][("worker-0", None)] < 30
    counts = worker["partition_counts"]
    for p in ("0", "1"):
        assert own["rnnstream_partition_events_total"][p] == counts[int(p)]["in"]
        assert own["rnnstream_partition_scored_total"][p] == counts[int(p)]["scored"]
        assert own["rnnstream_partition_dead_lettered_total"][p] == counts[int(p)]["dead_lettered"]
    assert sum(own["rnnstream_partition_events_total"].values()) == 1203
    assert own["rnnstream_lag_age_seconds"][""] < 30
    assert set(after["rnnstream_partition_events_total"]) == {str(kept)}
