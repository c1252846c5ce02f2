"""Kafka I/O against the real embedded broker: topics, round trips, routing, commits, DLQ, transactions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka import KafkaProducer

from rnnstream.cli.main import main
from rnnstream.pipelines.sample_stream import sample_events, sample_schema
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.workers.dead_letter import DeadLetterWriter, read_dead_letters
from rnnstream.workers.event_codec import JSON, DecodedBatch, decode, message_headers
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.kafka_io import PartitionConsumer, TopicAdmin, partition_for_key, topic_names
from rnnstream.workers.kafka_settings import KafkaSettings
from tests.workers.codec_cases import NOW_MS, bad_cases, good_event, js

PARTITIONS = 3


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def pipeline(settings: KafkaSettings) -> EventSchema:
    schema = sample_schema(unique("io"))
    with TopicAdmin(settings) as admin:
        admin.create_pipeline_topics(schema.pipeline, PARTITIONS)
    return schema


def wait_for(cond: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def consume_all(settings: KafkaSettings, topic: str, expect_messages: int, **kw) -> list:
    with PartitionConsumer(settings, topic, range(PARTITIONS), **kw) as c:
        out: list = []
        deadline = time.monotonic() + 30
        while len(out) < expect_messages and time.monotonic() < deadline:
            out.extend(c.poll(max_records=5000, timeout_ms=200))
        return out


def test_topics_created_listed_and_internal_hidden(settings: KafkaSettings) -> None:
    name = unique("adm")
    assert main(["topics", "create", "--pipeline", name, "--partitions", "4",
                 "--bootstrap-servers", settings.bootstrap_servers]) == 0  # fmt: skip
    with TopicAdmin(settings) as admin:
        names = admin.list_topics()
        assert set(topic_names(name).all()) <= set(names)
        assert not any(n.startswith("__") for n in names)
        assert admin.partitions(f"{name}.events") == 4
        # idempotent: existing topics are kept as they are
        assert admin.create_pipeline_topics(name, 2) == dict.fromkeys(topic_names(name).all(), 4)
        assert admin.partitions("no-such-topic-" + name) is None


@pytest.mark.parametrize("encoding", ["json", "arrow"])
def test_round_trip_10000_events_every_field_equal(
    settings: KafkaSettings, pipeline: EventSchema, encoding: str
) -> None:
    table = sample_events(pipeline, 10_000, 200, seed=3, start_ms=NOW_MS - 10**6)
    topic = topic_names(pipeline.pipeline).events
    with EventProducer(settings, pipeline) as prod:
        sent = prod.send_json(table) if encoding == "json" else prod.send_arrow(table, events_per_message=700)
        prod.flush()
    expect = 10_000 if encoding == "json" else sent
    msgs = consume_all(settings, topic, expect)
    assert len(msgs) == expect
    d = decode(msgs, pipeline)
    d.check_invariant()
    assert not d.rejects and d.num_valid == 10_000
    got = pa.Table.from_batches([d.batch])
    # times are unique and increasing in the generator: sort to undo the partition interleaving
    got = got.take(pc.sort_indices(got, [("time", "ascending")]))
    assert got.equals(table)
    # every key's events sit in the partition Kafka's default partitioner picks, in event order
    for key, part in zip(d.batch.column("key").to_pylist(), d.partition.tolist(), strict=True):
        assert part == partition_for_key(key, PARTITIONS)


def test_json_and_arrow_route_a_key_to_the_same_partition(
    settings: KafkaSettings, pipeline: EventSchema
) -> None:
    table = sample_events(pipeline, 400, 50, seed=9, start_ms=NOW_MS - 10**6)
    with EventProducer(settings, pipeline) as prod:
        n_json = prod.send_json(table)  # kafka-python's own DefaultPartitioner picks the partition
        n_arrow = prod.send_arrow(table, events_per_message=50)
        prod.flush()
    msgs = consume_all(settings, topic_names(pipeline.pipeline).events, n_json + n_arrow)
    d = decode(msgs, pipeline)
    where: dict[str, set[int]] = {}
    for key, part in zip(d.batch.column("key").to_pylist(), d.partition.tolist(), strict=True):
        where.setdefault(key, set()).add(part)
    assert d.num_valid == 800 and all(len(p) == 1 for p in where.values())


def test_manual_assign_seek_pause_commit_and_lag(settings: KafkaSettings, pipeline: EventSchema) -> None:
    topic = topic_names(pipeline.pipeline).events
    prod = KafkaProducer(**settings.client_kwargs())
    for i in range(30):
        prod.send(topic, value=js(good_event(key=f"k{i}")), partition=i % PARTITIONS)
    prod.flush()
    prod.close()
    group = unique("grp")
    with PartitionConsumer(settings, topic, [0, 1], group_id=group) as c:
        assert c.assignment() == [0, 1]
        assert c.end_offsets() == {0: 10, 1: 10}
        wait_for(lambda: sum(c.lag().values()) == 20, what="lag 20")
        c.seek(0, 7)
        c.pause([1])
        assert c.paused() == [1]
        got: list = []
        wait_for(lambda: bool(got.extend(c.poll(100, 100)) or len(got) >= 3), what="3 messages")
        assert [(m.partition, m.offset) for m in got] == [(0, 7), (0, 8), (0, 9)]
        assert c.lag() == {0: 0, 1: 10}
        c.resume()
        got = []
        wait_for(lambda: bool(got.extend(c.poll(100, 100)) or len(got) >= 10), what="partition 1")
        assert {m.partition for m in got} == {1}
        assert c.committed(0) is None
        c.commit({0: 10, 1: 4})
        assert c.committed(0) == 10 and c.committed(1) == 4
    # stored in the broker: a new consumer of the same group reads them back, and starts there
    with PartitionConsumer(settings, topic, [1], group_id=group) as c2:
        assert c2.committed(1) == 4 and c2.committed(0) == 10
        msgs: list = []
        wait_for(lambda: bool(msgs.extend(c2.poll(100, 100)) or msgs), what="resume at committed")
        assert msgs[0].offset == 4
    with pytest.raises(ValueError, match="group_id"), PartitionConsumer(settings, topic, [0]) as c3:
        c3.commit({0: 1})


def test_read_committed_hides_aborted_transaction(settings: KafkaSettings, pipeline: EventSchema) -> None:
    topic = topic_names(pipeline.pipeline).scores
    tx = KafkaProducer(**settings.client_kwargs(), transactional_id=unique("tx"))
    tx.init_transactions()
    tx.begin_transaction()
    tx.send(topic, value=b"aborted", partition=0)
    tx.flush()
    tx.abort_transaction()
    tx.begin_transaction()
    tx.send(topic, value=b"committed", partition=0)
    tx.commit_transaction()
    tx.close()
    with PartitionConsumer(settings, topic, [0], isolation_level="read_committed") as c:
        seen: list = []
        wait_for(lambda: bool(seen.extend(c.poll(100, 100)) or seen), what="committed message")
        assert [m.value for m in seen] == [b"committed"]


def test_bad_inputs_dead_lettered_with_reason(settings: KafkaSettings, pipeline: EventSchema) -> None:
    """Every bad kind goes to <p>.dlq with raw bytes unchanged and its reason; in = valid + dead-lettered."""
    topics = topic_names(pipeline.pipeline)
    cases = bad_cases(pipeline)
    jh = message_headers(pipeline, JSON)
    with EventProducer(settings, pipeline) as prod:
        for i, (_, value, headers, _) in enumerate(cases):
            prod.send_raw(js(good_event(key=f"g{i}", time=NOW_MS - 1)), b"g", jh, partition=i % PARTITIONS)
            prod.send_raw(value, b"b%d" % i, headers, partition=i % PARTITIONS)
        prod.flush()
    msgs = consume_all(settings, topics.events, 2 * len(cases))
    assert len(msgs) == 2 * len(cases)
    total_valid = total_rejects = 0
    with DeadLetterWriter(pipeline, settings) as dlq:
        for start in range(0, len(msgs), 17):  # several decode batches; invariant for each
            d: DecodedBatch = decode(msgs[start : start + 17], pipeline, now_ms=NOW_MS)
            d.check_invariant()
            dlq.write(d.rejects)
            total_valid += d.num_valid
            total_rejects += len(d.rejects)
        dlq.flush()
    assert total_valid == len(cases) and total_rejects == len(cases)
    letters = read_dead_letters(settings, pipeline.pipeline, expect=len(cases))
    assert len(letters) == len(cases)
    by_key = {dl.key: dl for dl in letters}
    for i, (name, value, _, reason) in enumerate(cases):
        dl = by_key[b"b%d" % i]
        assert dl.reason == reason, name
        assert dl.source_topic == topics.events and dl.source_partition == i % PARTITIONS
        assert dl.schema_version == pipeline.version and dl.pipeline == pipeline.pipeline
        src = next(m for m in msgs if m.key == b"b%d" % i)
        assert dl.source_offset == src.offset
        if dl.event_index is None:
            assert dl.raw == value, name


def test_produce_cli_json_and_arrow(settings: KafkaSettings) -> None:
    name = unique("cli")
    common = ["--pipeline", name, "--events", "500", "--keys", "20", "--bootstrap-servers",
              settings.bootstrap_servers]  # fmt: skip
    assert main(["produce", *common]) == 2  # topics missing: clear error
    assert main(["produce", *common, "--partitions", str(PARTITIONS)]) == 0
    assert main(["produce", *common, "--encoding", "arrow", "--events-per-message", "100"]) == 0
    with PartitionConsumer(settings, topic_names(name).events, range(PARTITIONS)) as c:
        n_messages = sum(c.end_offsets().values())
    assert 500 < n_messages <= 500 + 5 + PARTITIONS
    msgs = consume_all(settings, topic_names(name).events, n_messages)
    d = decode(msgs, sample_schema(name))
    assert d.num_valid == 1000 and not d.rejects


def test_registered_pipeline_round_trip(settings: KafkaSettings) -> None:
    """A registered pipeline's generator and schema round-trip through JSON and Arrow."""
    from rnnstream.pipelines.sample_stream import generate_events, resolve_schema
    from rnnstream.pipelines.spec import PIPELINE_NAMES

    name = PIPELINE_NAMES[0]
    schema = resolve_schema(name)
    table = generate_events(name, 300, 10)
    topic = unique("reg")
    with TopicAdmin(settings) as admin:
        admin.create_topics([topic], PARTITIONS)
    with EventProducer(settings, schema, topic) as prod:
        prod.send_json(table.slice(0, 150))
        prod.send_arrow(table.slice(150), events_per_message=40)
        prod.flush()
    with PartitionConsumer(settings, topic, range(PARTITIONS)) as c:
        n_messages = sum(c.end_offsets().values())
    d = decode(consume_all(settings, topic, n_messages), schema)
    assert not d.rejects and d.num_valid == 300
    got = pa.Table.from_batches([d.batch])
    assert got.take(pc.sort_indices(got, [("time", "ascending"), ("key", "ascending")])).equals(
        table.take(pc.sort_indices(table, [("time", "ascending"), ("key", "ascending")]))
    )


def test_poll_decoded_with_prefetch_matches_plain_decode(
    settings: KafkaSettings, pipeline: EventSchema
) -> None:
    table = sample_events(pipeline, 3000, 30, seed=12, start_ms=NOW_MS - 10**6)
    topic = topic_names(pipeline.pipeline).events
    with EventProducer(settings, pipeline) as prod:
        prod.send_json(table)
        prod.flush()
    from rnnstream.workers.event_codec import EventDecoder

    decoder = EventDecoder(pipeline)
    with PartitionConsumer(settings, topic, range(PARTITIONS)) as c:
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 30
        polls = 0
        while len(seen) < 3000 and time.monotonic() < deadline:
            d = c.poll_decoded(decoder, max_records=300, timeout_ms=200)
            d.check_invariant()
            seen += list(zip(d.partition.tolist(), d.offset.tolist(), strict=True))
            polls += d.num_valid > 0
            if polls == 2 and d.num_valid:  # a seek mid-stream drops what was prefetched: exact re-read
                c.seek(0, 0)
                seen = [s for s in seen if s[0] != 0]
        assert len(seen) == len(set(seen)) == 3000
        ends = c.end_offsets()
        assert sorted(seen) == [(p, o) for p in range(PARTITIONS) for o in range(ends[p])]


def test_committed_all_is_false_for_a_topic_the_broker_does_not_name(
    settings: KafkaSettings, pipeline: EventSchema, tmp_path
) -> None:
    """Everything committed needs the topic's partitions: a topic the broker does not (yet) name is not
    a reached end (a wait on it would pass at once), an empty one is, one event more is not."""
    from rnnstream.workers.worker_config import committed_all
    from tests.workers.worker_harness import worker_config

    unknown = worker_config(settings, sample_schema(unique("nosuch")), tmp_path / "a")
    assert not committed_all(settings, unknown)
    config = worker_config(settings, pipeline, tmp_path / "b")
    assert committed_all(settings, config)
    with EventProducer(settings, pipeline) as producer:
        producer.send_json(sample_events(pipeline, 1, 1))
        producer.flush()
    assert not committed_all(settings, config)
