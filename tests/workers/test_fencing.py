"""Fencing holds: an old owner that was paused past its handover and then wakes up can never commit.

Two real workers on the real broker, no Ray: the old owner's loop is frozen mid-stream (as SIGSTOP would,
between two cycles, with events it has not scored yet), its slot is fenced and a new owner takes its
partitions from the checkpoints; then the old owner resumes, reads more, scores, sends, and tries to commit.
"""

from __future__ import annotations

import threading

import pytest

from rnnstream.workers.score_verifier import read_topic
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.scoring_worker_actor import fence_slot
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import make_events, produce, run_verifier, wait_for, worker_config

PARTITIONS = 2


def _scored(worker: ScoringWorker) -> int:
    return sum(c["scored"] for c in worker.metrics_snapshot()["partition_counts"].values())


def test_a_woken_old_owner_cannot_commit_after_the_handover(new_stream, tmp_path):
    settings, _, schema, model, handle = new_stream("fence", PARTITIONS)
    events = make_events(schema, 6000, 200, seed=11)
    config = worker_config(settings, schema, tmp_path / "ckpt")
    old = ScoringWorker(1, config, export_metrics=False)
    new = None
    gate = threading.Event()
    frozen_now = threading.Event()

    def hold_loop() -> None:
        frozen_now.set()
        gate.wait()

    try:
        old.assign(list(range(PARTITIONS)), handle)
        produce(settings, schema, events.slice(0, 2000))
        wait_for(lambda: committed_all(settings, config), 60, "the old owner to commit the first events")
        frozen = threading.Thread(target=old._calls.call, args=(hold_loop,), kwargs={"timeout": None})
        frozen.start()
        # its loop now hangs between two cycles, like a process under SIGSTOP; the next events are sent
        # only once it does (else its current cycle may still fetch and commit some of them)
        wait_for(frozen_now.is_set, 30, "the old owner's loop to freeze")
        produce(settings, schema, events.slice(2000, 2000))  # the old owner will see these when it wakes

        assert fence_slot(config, 1)  # the handover rule: fence the silent owner, then hand over
        new = ScoringWorker(0, config, export_metrics=False)
        new.assign(list(range(PARTITIONS)), handle)
        produce(settings, schema, events.slice(4000, 2000))
        wait_for(lambda: committed_all(settings, config), 60, "the new owner to commit everything")
        new_scored = _scored(new)

        gate.set()  # SIGCONT: the old owner polls, scores and sends what it missed, then tries to commit
        frozen.join(timeout=30)
        # `fenced` shows as soon as it finds out, before its loop closed its clients and ended: wait for the
        # end, then check why it ended
        wait_for(lambda: not old.status()["alive"], 60, "the old owner's loop to end")
        assert old.status()["fenced"]
        assert _scored(old) >= 2000  # it scored the first events before it was frozen
        new.shutdown()
    finally:
        gate.set()
        old.shutdown(timeout=10)
        if new is not None:
            new.shutdown()
    verdict = run_verifier(settings, config, model, handle, PARTITIONS)
    assert new_scored == 4000  # the new owner scored what the old one had not committed
    assert verdict.expected == 6000 and verdict.duplicates == 0 and verdict.missing == 0
    assert verdict.ok, verdict.line
    # the old owner's late sends never became visible to read_committed readers
    assert len(read_topic(settings, config.scores_topic)) == verdict.scored


def test_a_fenced_transaction_fails_on_its_stale_epoch_and_never_recovers(kafka_settings, tmp_path):
    """The zombie's hardest case: fenced while its transaction is open, so its next write is a produce
    request with the old epoch (refused with INVALID_PRODUCER_EPOCH). kafka-python would recover from that
    by bumping the epoch or taking a fresh producer id for the same transactional id, fencing the new owner
    back; ScoresTransaction makes it fatal: the commit raises ProducerFenced and none of it is visible."""
    from kafka import KafkaProducer

    from rnnstream.workers.kafka_io import TopicAdmin
    from rnnstream.workers.scores_transaction import ProducerFenced, ScoresTransaction

    topic = f"fenced-{tmp_path.name}"[:60]
    with TopicAdmin(kafka_settings) as admin:
        admin.create_topics([topic], 1)
    txn_id = f"zombie-{tmp_path.name}"[:60]
    producer = KafkaProducer(**kafka_settings.client_kwargs(), transactional_id=txn_id)
    producer.init_transactions()
    zombie = ScoresTransaction(producer, transactional=True, commit_timeout_ms=10_000)
    try:
        zombie.begin()
        zombie.send(topic, b"before the handover", 0)
        producer.flush(timeout=10)  # the partition is in the transaction: later sends go straight to produce
        owner = KafkaProducer(**kafka_settings.client_kwargs(), transactional_id=txn_id)
        owner.init_transactions()  # the handover's fence
        owner.begin_transaction()
        owner.send(topic, b"the new owner", partition=0)
        owner.commit_transaction()
        owner.close(timeout=5)
        with pytest.raises(ProducerFenced):
            zombie.send(topic, b"after the handover", 0)  # refused: stale epoch (asynchronously)
            producer.flush(timeout=10)
            zombie.send(topic, b"and again", 0)  # recovered, this would be an IllegalStateError and a reset
            zombie.commit({}, "unused-group", None)
    finally:
        producer.close(timeout=5)
    assert [m.value for m in read_topic(kafka_settings, topic)] == [b"the new owner"]
