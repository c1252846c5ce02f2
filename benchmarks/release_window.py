"""One window for both sides of ``benchmarks/peer_quixstreams.py``: a warmed consumer, a backlog released
in one transaction, and the run's events/s from that release to the committer's own last commit.

``release_backlog`` does the sending and waiting; the caller starts the consumer (rnnstream's workers or the
Quix app) on an empty topic first and supplies the end (the moment its committer's last Kafka commit
returned), which ``timed_run`` turns into a :class:`Run`. ``source_records``, ``after`` and
``one_per_partition`` take the messages to send (as produced, partition by partition) from a topic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import e2e_fixtures as e2e


@dataclass(frozen=True)
class Run:
    """One timed run: events/s and events per CPU-second over its window, and the window's parts (s)."""

    eps: float
    eps_per_cpu_s: float
    window_s: float  # the backlog's release committed -> the committer's last commit returned
    warm_s: float  # warm-up messages sent -> seen committed (start-up, outside the window)
    release_s: float  # the release transaction's commit call (EndTxn), outside the window
    notice_s: float  # the last commit -> wait_committed saw it (outside the window)


def send_records(producer, topic: str, records) -> dict[int, int]:
    """Send ``records`` ((partition, key, value, headers)) and flush; the next offset of each partition."""
    futures = [producer.send(topic, key=k, value=v, headers=h, partition=p) for p, k, v, h in records]
    producer.flush()
    ends: dict[int, int] = {}
    for f in futures:
        md = f.get(timeout=60)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    return ends


def release_backlog(settings, group: str, topic: str, warm, records, txn_id: str, cpu, alive=None) -> dict:
    """The same timing for both sides, whose consumer (group ``group``) is started on ``topic``, empty.

    1. ``warm`` (a message on each partition, keys of their own) in one transaction, then wait until
       ``group`` committed them: its consumers are assigned and have fetched, scored, produced and committed
       once (model loaded, first transaction, compiled/warmed step, state store open).
    2. ``records`` in one more open transaction, committed at once: the whole backlog visible together. The
       window starts when that commit returns; the committer's own last commit moment ends it (the caller's).
    Returns {"t0", "cpu0" (``cpu()`` just before the release), "warm_s", "release_s", "noticed" (when
    wait_committed saw every offset committed), "cpu_noticed"}."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        **settings.client_kwargs(), transactional_id=txn_id, linger_ms=20, batch_size=1 << 20
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        tw = time.monotonic()
        warm_ends = send_records(producer, topic, warm)
        producer.commit_transaction()
        e2e.wait_committed(settings, group, topic, 180, warm_ends, alive=alive)
        warm_s = time.monotonic() - tw
        producer.begin_transaction()
        ends = send_records(producer, topic, records)
        cpu0, tr = cpu(), time.monotonic()
        producer.commit_transaction()
        t0 = time.monotonic()
        noticed = e2e.wait_committed(settings, group, topic, 600, ends, alive=alive)
        return {"t0": t0, "cpu0": cpu0, "warm_s": warm_s, "release_s": t0 - tr, "noticed": noticed,
                "cpu_noticed": cpu()}  # fmt: skip
    finally:
        producer.close()


def timed_run(n: int, w: dict, end: float, cpu_end: float) -> Run:
    window = end - w["t0"]
    return Run(n / window, n / (cpu_end - w["cpu0"]), window, w["warm_s"], w["release_s"], w["noticed"] - end)


def source_records(settings, topic: str) -> list[tuple[int, bytes, bytes, list]]:
    """(partition, key, value, headers) of every message of an events topic, to send again as they are."""
    from rnnstream.workers.score_verifier import read_topic

    return [(m.partition, m.key, m.value, list(m.headers or [])) for m in read_topic(settings, topic)]


def after(first, everything) -> list:
    """The messages of ``everything`` past ``first``, which it begins with partition by partition."""
    skip: dict[int, int] = {}
    for r in first:
        skip[r[0]] = skip.get(r[0], 0) + 1
    out = []
    for r in everything:
        if skip.get(r[0], 0):
            skip[r[0]] -= 1
        else:
            out.append(r)
    return out


def one_per_partition(records) -> list:
    """The first message of each partition (the warm-up); every partition must have one."""
    firsts: dict[int, tuple] = {}
    for r in records:
        firsts.setdefault(r[0], r)
    if len(firsts) != e2e.PARTITIONS:
        raise RuntimeError(f"warm-up messages on partitions {sorted(firsts)} only")
    return [firsts[p] for p in sorted(firsts)]
