"""A transaction's commit overlaps the next batch (:mod:`commit_in_flight`): commit N runs in the background
while the loop scores batch N+1. When commit N fails there, the states batch N+1 moved must be dropped with
it: nothing lost, nothing scored twice, scores and final states equal to the offline reference.

The failure is injected at the worker's own seam (:meth:`WorkerClients.commit` of its first clients, run on
the commit thread): it waits until the loop has scored past the offsets being committed (the overlap, which
the test asserts happened), then either raises before committing (the transaction is aborted) or after the
commit went through (the worker believes it failed; the broker has it).
"""

from __future__ import annotations

import threading
import time

import pytest

from rnnstream.workers.commit_in_flight import CommitInFlight
from rnnstream.workers.partition_offsets import PartitionOffsets
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import make_events, produce, run_verifier, wait_for, worker_config

PARTITIONS = 2
EVENTS = 6000


@pytest.mark.parametrize("fail", ["before_commit", "after_commit"])
def test_commit_failure_mid_overlap_loses_and_duplicates_nothing(new_stream, tmp_path, fail):
    settings, _, schema, model, handle = new_stream(f"overlap-{fail.split('_')[0]}", PARTITIONS)
    produce(settings, schema, make_events(schema, EVENTS, 300, seed=11), encoding="json")
    # small batches, a commit at least every 10 ms: many commits, each with a backlog to score behind it
    config = worker_config(
        settings,
        schema,
        tmp_path / "ckpt",
        max_batch_events=256,
        commit_interval_ms=10,
        checkpoint_interval_events=1500,
        checkpoint_interval_seconds=30.0,
        overlap_commits=True,
    )
    worker = ScoringWorker(0, config, export_metrics=False)
    seen: dict[str, object] = {}
    try:
        wait_for(lambda: worker._clients is not None, 30, "the worker's clients")
        clients = worker._clients
        real_commit = clients.commit
        calls = [0]

        def failing_commit(next_offsets):
            if threading.current_thread() is worker._thread:
                return real_commit(next_offsets)  # a commit the loop waits for (checkpoint due, quiesce)
            calls[0] += 1
            if calls[0] != 2:
                return real_commit(next_offsets)  # the 2nd commit run in the background fails
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "overlap" not in seen:
                nxt = {p: part.offsets.next_offset for p, part in list(worker.parts.items())}
                if any(nxt.get(p, 0) > off for p, off in next_offsets.items()):
                    seen["overlap"] = (dict(next_offsets), nxt)
                time.sleep(0.001)
            if fail == "after_commit":
                real_commit(next_offsets)
            raise ConnectionError(f"injected commit failure ({fail})")

        clients.commit = failing_commit
        worker.assign(list(range(PARTITIONS)), handle)
        wait_for(lambda: committed_all(settings, config), 90, "all events committed")
        worker.final_checkpoint()
        status = worker.status()
    finally:
        worker.shutdown()
    assert "overlap" in seen, "the injected commit never overlapped a scored next batch"
    assert status["resets"] == 1 and status["fenced"] is False
    verdict = run_verifier(settings, config, model, handle, PARTITIONS)
    assert verdict.expected == EVENTS and verdict.scored == EVENTS
    assert verdict.state_keys_checked > 0
    assert verdict.ok, verdict.line


def test_commit_in_flight_hands_back_offsets_and_errors():
    gate = threading.Event()
    inflight = CommitInFlight("test")
    try:
        inflight.start(gate.wait, {0: 10, 1: 7})
        assert inflight.pending and not inflight.done()
        with pytest.raises(RuntimeError):
            inflight.start(lambda: None, {0: 11})  # one transaction at a time
        gate.set()
        done = inflight.wait()
        assert done.offsets == {0: 10, 1: 7} and done.ended >= done.started and not inflight.pending

        def fail() -> None:
            raise ConnectionError("commit failed")

        inflight.start(fail, {0: 12})
        with pytest.raises(ConnectionError):
            inflight.wait()
        inflight.start(fail, {0: 12}, background=False)  # at once, on this thread: the outcome waits too
        assert inflight.done()
        assert isinstance(inflight.abandon(), ConnectionError) and not inflight.pending
    finally:
        inflight.close()


def test_a_partition_scored_past_a_commit_in_flight_is_not_checkpointed_yet():
    offsets = PartitionOffsets.restored(0, 0, None)
    offsets.applied(99, 100)  # batch N, committing in the background
    committing = offsets.next_offset
    offsets.applied(149, 50)  # batch N+1, scored behind it
    offsets.mark_committed(committing)
    assert offsets.committed == 100 and offsets.uncommitted
    assert offsets.interval_due(100, 60.0) and not offsets.checkpoint_due(100, 60.0)
    offsets.mark_committed()
    assert offsets.checkpoint_due(100, 60.0)
