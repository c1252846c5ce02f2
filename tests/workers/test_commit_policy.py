"""The worker loop's commit timing policy (no Kafka: the policy is plain arithmetic on what a cycle saw)."""

from __future__ import annotations

from types import SimpleNamespace

from rnnstream.workers.commit_policy import IDLE_POLL_MS, CommitPolicy, offsets_after


def _policy(interval: int = 100, minimum: int = 0, max_batch: int = 4096) -> CommitPolicy:
    config = SimpleNamespace(
        commit_interval_ms=interval, min_commit_interval_ms=minimum, max_batch_events=max_batch
    )
    return CommitPolicy(config)


def test_keeping_up_commits_the_batch_in_hand_at_once():
    assert _policy().due(polled=3, caught_up=lambda: True, age_ms=0.0)
    # a minimum interval holds a young transaction open
    assert not _policy(minimum=10).due(polled=3, caught_up=lambda: True, age_ms=5.0)
    assert _policy(minimum=10).due(polled=3, caught_up=lambda: True, age_ms=10.0)


def test_behind_batches_until_the_commit_interval():
    behind = _policy(interval=100)
    assert not behind.due(polled=3, caught_up=lambda: False, age_ms=99.0)
    assert behind.due(polled=3, caught_up=lambda: False, age_ms=100.0)
    # a full batch means more is waiting: the broker is not asked
    asked = []
    assert not _policy(max_batch=8).due(polled=8, caught_up=lambda: asked.append(1) or True, age_ms=1.0)
    assert asked == []


def test_poll_never_waits_past_the_open_transactions_due_time():
    import time

    policy = _policy(interval=100, minimum=20)
    assert policy.poll_wait_ms(tx_open=False, tx_started=0.0) == IDLE_POLL_MS
    assert policy.poll_wait_ms(tx_open=True, tx_started=time.monotonic() - 1.0) == 0
    assert 0 < policy.poll_wait_ms(tx_open=True, tx_started=time.monotonic()) <= 20


def test_offsets_after_a_batch_are_one_past_each_partitions_last_message():
    msgs = {0: [SimpleNamespace(offset=5), SimpleNamespace(offset=9)], 3: [SimpleNamespace(offset=1)]}
    # partition 3 is not owned; a re-delivered batch below the next offset does not move it back
    assert offsets_after({0: 4, 1: 7}, msgs) == {0: 10, 1: 7}
    assert offsets_after({0: 12}, msgs) == {0: 12}
