"""Lag tells the truth: it is read from the broker apart from the worker's own clients, so it keeps growing
while the worker's loop is stuck or failing, and when the broker does not answer the worker says so instead
of showing its last number. Real broker, real worker (no Ray)."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.partition_lag import lag_of
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    create_topics,
    make_events,
    make_model,
    make_schema,
    new_pipeline,
    produce,
    wait_for,
    worker_config,
)

PARTITIONS = 2


def endpoint_lag(worker: ScoringWorker) -> dict[str, float]:
    """``{partition: lag}`` from the worker's own Prometheus endpoint."""
    url = f"http://127.0.0.1:{worker.status()['metrics_port']}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        s.labels["partition"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "rnnstream_lag"
    }


def test_lag_is_the_distance_from_the_position_the_worker_will_go_on_from():
    ends = {0: 100, 1: 50, 2: 9}
    positions = {0: (70, 40), 1: (20, 0), 2: (9, 9), 3: (5, 5)}  # partition 3: the broker did not report it
    assert lag_of(ends, positions, healthy=True) == {0: 30, 1: 30, 2: 0}
    # failing: what is not committed will be done again
    assert lag_of(ends, positions, healthy=False) == {0: 60, 1: 50, 2: 0}
    # replaying below the committed offset: those events are not scored again
    assert lag_of({0: 100}, {0: (10, 80)}, healthy=True) == {0: 20}


def test_lag_keeps_growing_while_the_loop_is_stuck(new_stream, tmp_path):
    settings, _, schema, _, handle = new_stream("lagstuck", PARTITIONS)
    events = make_events(schema, 2600, 50, seed=5)
    config = worker_config(settings, schema, tmp_path / "ckpt", lag_every_s=0.1, stall_after_s=1.0)
    worker = ScoringWorker(0, config, export_metrics=False)
    gate, frozen_now = threading.Event(), threading.Event()

    def freeze() -> None:
        frozen_now.set()
        gate.wait()

    try:
        worker.assign(list(range(PARTITIONS)), handle)
        produce(settings, schema, events.slice(0, 1000))
        wait_for(lambda: committed_all(settings, config), 60, "the first events committed")
        wait_for(lambda: worker.status()["lag"] == {0: 0, 1: 0}, 30, "lag 0 once caught up")
        frozen = threading.Thread(target=worker._calls.call, args=(freeze,), kwargs={"timeout": None})
        frozen.start()  # the loop hangs between two cycles: its clients read nothing more
        assert frozen_now.wait(30)
        produce(settings, schema, events.slice(1000, 1000))
        wait_for(lambda: worker.status()["lag_total"] == 1000, 30, f"lag 1000 stuck ({worker.status()})")
        produce(settings, schema, events.slice(2000, 600))
        wait_for(lambda: worker.status()["lag_total"] == 1600, 30, "lag 1600 with the loop stuck")
        st = worker.status()
        assert st["lag_error"] is None and st["lag_age_s"] < 30
        assert sum(endpoint_lag(worker).values()) == 1600
        # behind and not moving: reported stalled, per partition, instead of looking healthy
        wait_for(lambda: set(worker.status()["stalled"]) == {0, 1}, 30, "both partitions reported stalled")
        gate.set()
        frozen.join(timeout=30)
        wait_for(lambda: committed_all(settings, config), 60, "everything committed after the thaw")
        wait_for(lambda: worker.status()["lag_total"] == 0, 30, "lag back to 0")
        assert worker.status()["stalled"] == {}
    finally:
        gate.set()
        worker.shutdown()


def test_an_unreachable_broker_shows_no_lag_and_says_why(tmp_path):
    """While the broker is away, lag is no number (an idle worker's own clients may not even notice)."""
    broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port(), die_with_parent=True)
    broker.start()
    worker = None
    try:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        pipeline = new_pipeline("lagaway")
        schema = make_schema(pipeline)
        _, handle = make_model(schema, tmp_path / "model")
        create_topics(settings, pipeline, PARTITIONS)
        config = worker_config(settings, schema, tmp_path / "ckpt", lag_every_s=0.1, error_backoff_s=0.2)
        worker = ScoringWorker(0, config, export_metrics=False)
        worker.assign(list(range(PARTITIONS)), handle)
        produce(settings, schema, make_events(schema, 500, 20, seed=3))
        wait_for(lambda: committed_all(settings, config), 60, "events committed")
        wait_for(lambda: worker.status()["lag"] == {0: 0, 1: 0}, 30, "lag of both partitions read")

        broker.stop()
        wait_for(lambda: worker.status()["lag_error"] is not None, 60, "the lag watcher to say so")
        st = worker.status()
        assert st["lag"] == {} and st["lag_total"] == 0 and st["partitions"] == [0, 1]
        assert st["lag_error"].startswith("lag unknown, the broker did not answer")
        assert endpoint_lag(worker) == {}  # no series rather than a stale value

        broker.start()
        produce(settings, schema, make_events(schema, 300, 20, seed=4))
        wait_for(lambda: committed_all(settings, config), 90, "the worker back and caught up")
        wait_for(
            lambda: worker.status()["lag"] == {0: 0, 1: 0} and worker.status()["lag_error"] is None,
            30,
            "lag read again",
        )
    finally:
        if worker is not None:
            worker.shutdown(timeout=20)
        broker.stop()


def test_the_status_line_shows_no_lag_number_when_the_broker_did_not_answer():
    from rnnstream.workers.serving import status_line

    fresh = {"slot": 0, "lag_total": 7, "lag_error": None}
    away = {"slot": 1, "lag_total": 0, "lag_error": "lag unknown, the broker did not answer: Timeout"}
    assert " lag=7 " in status_line({"pipeline": "p", "workers": [fresh]})
    line = status_line({"pipeline": "p", "workers": [fresh, away]})
    assert " lag=? " in line and "worker 1: lag unknown, the broker did not answer" in line
    assert "STALLED" not in line
    stuck = {"slot": 2, "lag_total": 900, "lag_error": None, "stalled": {3: 42.4}}
    line = status_line({"pipeline": "p", "workers": [fresh, stuck]})
    assert "worker 2 STALLED behind with no progress: partitions 3 for 42s" in line
