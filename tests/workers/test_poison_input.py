"""Input that breaks scoring never stalls a worker (run without Ray: the worker class is usable alone).

A model that raises on some events, a model whose features the events lack, and oversize messages: each
costs the worker a batch split at most, goes to the dead-letter topic with the reason, and the rest of the
stream is scored exactly as if the bad events were never there.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.workers.dead_letter import parse_dead_letter
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.score_verifier import offline_reference, read_events, read_scores, read_topic, verify
from rnnstream.workers.scoring_worker import ModelIncompatible, ScoringWorker
from rnnstream.workers.worker_config import ModelHandle, committed_all
from tests.rnn_core.failing_model import POISON, load_failing
from tests.workers.worker_harness import make_events, wait_for, worker_config


def _with_poison(table: pa.Table, rows: list[int]) -> pa.Table:
    amount = table.column("amount").to_numpy().copy()
    amount[rows] = POISON
    return table.set_column(table.schema.get_field_index("amount"), "amount", pa.array(amount))


@pytest.mark.parametrize(
    ("encoding", "max_batch_events"),
    [("json", 1024), ("arrow", 1024), ("arrow", 64)],
    ids=["json", "arrow", "arrow-sliced"],
)
def test_events_that_break_the_model_are_dead_lettered_and_the_rest_scored(
    new_stream, tmp_path, encoding, max_batch_events
):
    """``arrow-sliced``: a poll of up to 64 messages of 100 events is scored in calls of 64 events each (the
    scorer's calls count events, polls count messages); the poison rows fall in different calls."""
    settings, _, schema, model, handle = new_stream(f"poison-{encoding}-{max_batch_events}", 2)
    events = _with_poison(make_events(schema, 3000, 50, seed=11), [7, 1500, 2999])
    with EventProducer(settings, schema) as producer:
        if encoding == "json":
            producer.send_json(events)
        else:
            producer.send_arrow(events, events_per_message=100)
        producer.flush()
    config = worker_config(settings, schema, tmp_path / "ckpt", max_batch_events=max_batch_events)
    worker = ScoringWorker(0, config, model_loader=load_failing, export_metrics=False)
    try:
        worker.assign([0, 1], handle)
        wait_for(lambda: committed_all(settings, config), 60, "all events committed")
        snap = worker.metrics_snapshot()
    finally:
        worker.shutdown()
    assert snap["kafka_errors"] == 0 and snap["resets"] == 0  # no restart loop
    assert snap["dead_lettered"] == 3 and snap["scored"] == 2997 and snap["scoring_errors"] == 3
    for counts in snap["partition_counts"].values():
        assert counts["in"] == counts["scored"] + counts["dead_lettered"] + counts["replayed"]
    dead = [parse_dead_letter(m) for m in read_topic(settings, config.dlq_topic)]
    assert [d.reason for d in dead] == ["scoring_error"] * 3
    assert all("poison row" in d.detail for d in dead)
    # everything else is scored exactly once, equal to the offline forward without the poison events
    poisoned = {(d.source_partition, d.source_offset, d.event_index or 0) for d in dead}
    clean = read_events(settings, config.events_topic, schema).without(poisoned)
    verdict = verify(clean, read_scores(settings, config.scores_topic), offline_reference(clean, model))
    print(verdict.line)
    assert verdict.ok and verdict.expected == 2997, verdict.line


def test_a_model_that_reads_features_the_events_lack_is_refused(new_stream, tmp_path):
    settings, _, schema, _, _ = new_stream("lacking", 1)
    spec = FeatureSpec(numeric=("amount", "frame"), use_time_delta=True)
    other = StreamingModel(ModelConfig(features=spec, cell="gru", hidden_size=8))
    from rnnstream.rnn_core.serialization import save_model

    save_model(other, tmp_path / "video-like")
    handle = ModelHandle(version="local:video-like", locator=str(tmp_path / "video-like"))
    worker = ScoringWorker(0, worker_config(settings, schema, tmp_path / "ckpt"), export_metrics=False)
    try:
        with pytest.raises(ModelIncompatible, match="'frame'"):
            worker.assign([0], handle)
        assert worker.status()["partitions"] == []
    finally:
        worker.shutdown()


def test_serve_refuses_a_model_for_other_events_in_one_line(kafka_bootstrap, tmp_path, monkeypatch, capsys):
    """`rnnstream serve` with a model that reads a column the pipeline's events lack ends at start with one
    line naming the column, before any worker starts (measured before: 60 silent resets in 45 s, exit 0)."""
    from rnnstream.cli.main import main
    from rnnstream.pipelines.sample_stream import resolve_schema
    from rnnstream.rnn_core.serialization import save_model
    from rnnstream.workers.kafka_settings import KafkaSettings
    from tests.workers.worker_harness import create_topics, new_pipeline

    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path / "home"))
    pipeline = new_pipeline("refuse")
    resolve_schema(pipeline)
    create_topics(KafkaSettings(bootstrap_servers=kafka_bootstrap), pipeline, 1)
    spec = FeatureSpec(numeric=("frame",), use_time_delta=True)
    save_model(StreamingModel(ModelConfig(features=spec, hidden_size=8)), tmp_path / "video-like")
    rc = main(
        [
            "serve",
            "--pipeline",
            pipeline,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--model",
            str(tmp_path / "video-like"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and "'frame'" in err[0] and "cannot serve" in err[0], err


def test_score_chunks_over_the_brokers_message_limit_are_split_not_a_reset_loop(new_stream, tmp_path):
    """Arrow events with long keys: 8,192 scores with their keys make a record over the broker's message
    limit (~1 MB by default). It was sent (the producer allowed 16 MiB), the broker refused it, the commit
    failed, and the worker reset and replayed into the same refusal without end. Records are now kept under
    ``max_record_bytes``: the chunk is split and every event is scored, with no Kafka error."""
    import pyarrow.compute as pc

    settings, _, schema, model, handle = new_stream("bigkeys", 1)
    events = make_events(schema, 12_000, 12_000, seed=12)
    long_keys = pc.binary_join_element_wise(events.column("key"), pa.scalar("-" + "k" * 120), "")
    events = events.set_column(events.schema.get_field_index("key"), "key", long_keys)
    with EventProducer(settings, schema) as producer:
        producer.send_arrow(events, events_per_message=4000)  # ~0.6 MB each: the broker takes them
        producer.flush()
    config = worker_config(
        settings, schema, tmp_path / "ckpt", max_batch_events=16_384, max_poll_records=16_384
    )
    snap = _score_partition_0(settings, config, handle)
    assert snap["scored"] == 12_000 and snap["dead_lettered"] == 0
    assert max(len(m.value) for m in read_topic(settings, config.scores_topic)) <= config.max_record_bytes
    evs = read_events(settings, config.events_topic, schema)
    verdict = verify(evs, read_scores(settings, config.scores_topic), offline_reference(evs, model))
    assert verdict.ok and verdict.expected == 12_000, verdict.line


def test_a_score_too_large_to_write_is_dead_lettered_with_a_bounded_record(new_stream, tmp_path):
    settings, _, schema, _, handle = new_stream("hugekey", 1)
    events = make_events(schema, 400, 20, seed=13)
    keys = events.column("key").to_pylist()
    keys[123] = "h" * 80_000  # its score record (which carries the key) is over max_record_bytes
    events = events.set_column(events.schema.get_field_index("key"), "key", pa.array(keys, pa.string()))
    with EventProducer(settings, schema) as producer:
        producer.send_arrow(events, events_per_message=100)
        producer.flush()
    config = worker_config(settings, schema, tmp_path / "ckpt", max_record_bytes=60_000)
    snap = _score_partition_0(settings, config, handle)
    assert snap["scored"] == 399 and snap["dead_lettered"] == 1
    (dead,) = [parse_dead_letter(m) for m in read_topic(settings, config.dlq_topic)]
    assert dead.reason == "score_too_large" and dead.source_offset is not None and dead.event_index == 23
    assert len(dead.key or b"") <= 1024


def _score_partition_0(settings, config, handle) -> dict:
    """One worker scores partition 0 to its end; its metrics, after checking it never reset."""
    worker = ScoringWorker(0, config, export_metrics=False)
    try:
        worker.assign([0], handle)
        wait_for(lambda: committed_all(settings, config), 60, "all events committed")
        snap = worker.metrics_snapshot()
    finally:
        worker.shutdown()
    assert snap["kafka_errors"] == 0 and snap["resets"] == 0, snap["last_error"]
    return snap
