"""A worker's "caught up?" (which decides whether a scored batch commits at once or waits for
``commit_interval_ms``) after events written by a transactional producer: the commit marker takes the offset
after the last event, so the high watermark stays one past the next event; once the consumer has handed out
everything it fetched, that is no backlog. Events written in one open transaction count as backlog only
while more of them wait."""

from __future__ import annotations

from kafka import KafkaProducer, TopicPartition

from rnnstream.workers.worker_clients import WorkerClients
from tests.workers.worker_harness import worker_config


def test_caught_up_past_a_commit_marker(new_stream, tmp_path) -> None:
    settings, pipeline, schema, _, _ = new_stream("caught-up", 1)
    config = worker_config(settings, schema, tmp_path / "ckpt", max_poll_records=5)
    topic = f"{pipeline}.events"
    producer = KafkaProducer(**settings.client_kwargs(), transactional_id=f"{pipeline}-load")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(12):
        producer.send(topic, key=b"k", value=b"%d" % i, partition=0)
    producer.commit_transaction()
    producer.close()

    clients = WorkerClients(config, slot=0)
    try:
        clients.consumer.assign([TopicPartition(topic, 0)])
        clients.consumer.seek(TopicPartition(topic, 0), 0)
        seen: list[int] = []
        while len(seen) < 12:
            got = clients.poll_batch(5, 5, 2000).get(0, [])
            if not got:  # nothing fetched within the wait (a slow first fetch on a loaded machine)
                continue
            seen += [m.offset for m in got]
            assert clients.caught_up({0: seen[-1] + 1}) == (len(seen) == 12), seen
        assert clients.consumer.highwater(TopicPartition(topic, 0)) == 13  # 12 events and the marker
    finally:
        clients.close()
