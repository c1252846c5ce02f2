"""One window for both sides of ``benchmarks/peer_quixstreams.py``: a warmed consumer, a backlog released
in one transaction, and the run's events/s from that release to the committer's own last commit.

``release_backlog`` does the sending and waiting; the caller starts the consumer (rnnstream's workers or the
Quix app) on an empty topic first and supplies the end (the moment its committer's last Kafka commit
returned), which ``timed_run`` turns into a :class:`Run`. ``source_records``, ``after`` and
``one_per_partition`` take the messages to send (as produced, partition by partition) from a topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def release_backlog(
    settings, group: str, topic: str, warm, records, txn_id: str, cpu, alive=None, *, warmed=None,
    finished=None,
) -> dict:  # fmt: skip
    """The same timing for both sides, whose consumer (group ``group``) is started on ``topic``, empty.

    1. ``warm`` (a message on each partition, keys of their own) in one transaction, then wait until
       ``group`` committed them: its consumers are assigned and have fetched, scored, produced and committed
       once (model loaded, first transaction, compiled/warmed step, state store open).
    2. ``records`` in one more open transaction, committed at once: the whole backlog visible together. The
       window starts as that commit is sent (not when it returns: on a loaded machine the consumers can see
       the released records, and be through a small backlog, before the response reaches this process); the
       committer's own last commit moment ends it (the caller's).
    Returns {"t0" (the commit sent), "cpu0" (``cpu()`` just before the release), "warm_s", "release_s",
    "noticed" (when wait_committed saw every offset committed), "cpu_noticed"}. A consumer that commits no
    offsets (the bare pass-through) says itself when it is through: ``warmed(ends)`` waits for the
    warm-up's ``ends`` (next offset a partition), ``finished(ends)`` for the backlog's and returns when it
    saw that."""
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
        if warmed is None:
            e2e.wait_committed(settings, group, topic, 180, warm_ends, alive=alive)
        else:
            warmed(warm_ends)
        warm_s = time.monotonic() - tw
        producer.begin_transaction()
        ends = send_records(producer, topic, records)
        cpu0, tr = cpu(), time.monotonic()
        producer.commit_transaction()
        t0 = time.monotonic()
        if finished is None:
            noticed = e2e.wait_committed(settings, group, topic, 600, ends, alive=alive)
        else:
            noticed = finished(ends)
        return {"t0": tr, "cpu0": cpu0, "warm_s": warm_s, "release_s": t0 - tr, "noticed": noticed,
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


def release_records(settings, schema, warm_table, table, encoding: str) -> tuple[list, list]:
    """``warm_table`` then ``table`` produced (``encoding``) into ``schema``'s events topic and read back:
    (the warm-up: one message a partition, the backlog: the messages of ``table``), to send as they are to
    every run's own topic. The source topics are dropped once read."""
    e2e.create_topics(settings, schema.pipeline)
    topic = f"{schema.pipeline}.events"
    e2e.produce(settings, schema, warm_table, encoding)
    warm_all = source_records(settings, topic)
    e2e.produce(settings, schema, table, encoding)
    backlog = after(warm_all, source_records(settings, topic))
    e2e.drop_topics(settings, f"{schema.pipeline}.")  # read back: every run sends its own copy
    return one_per_partition(warm_all), backlog


def rnnstream_window(
    settings, schema, handle, warm, records, n: int, release: str, tmp, cpu: Callable[[], float] | None = None
) -> Run:
    """:func:`rnnstream_release`'s run alone."""
    return rnnstream_release(settings, schema, handle, warm, records, n, release, tmp, cpu)[0]


def rnnstream_release(
    settings, schema, handle, warm, records, n: int, release: str, tmp, cpu: Callable[[], float] | None = None
) -> tuple[Run, str, str]:
    """rnnstream's 2 workers (exactly-once, :func:`e2e.run_workers`), release ``release`` of ``schema``'s
    pipeline on an events topic of its own, scoring ``n`` events (``records``: JSON messages or Arrow
    batches) released by :func:`release_backlog`; the window ends when the later of the two workers' last
    commits returned (each worker reports it). CPU: ``cpu()`` seconds, by default the two worker
    processes'. Returns (the run, its events topic, its scores topic)."""
    import psutil
    import ray

    from rnnstream.workers.kafka_io import TopicAdmin
    from rnnstream.workers.serving import stop_coordinator
    from rnnstream.workers.worker_config import release_topic

    events_topic = f"{schema.pipeline}.{release}.events"
    with TopicAdmin(settings) as admin:
        kinds = ("scores", "dlq", "scores.shadow")
        admin.create_topics(
            [events_topic, *(release_topic(schema.pipeline, release, k) for k in kinds)], e2e.PARTITIONS
        )
    ckpt = tmp / f"ckpt-{schema.pipeline}-{release}"
    config, coord = e2e.run_workers(
        settings, schema, handle, ckpt, deployment=release, events_topic=events_topic
    )
    try:
        if cpu is None:
            procs = [psutil.Process(pid) for pid in ray.get(coord.worker_pids.remote()).values()]
            cpu = lambda: e2e.cpu_seconds(procs)  # noqa: E731
        w = release_backlog(
            settings, config.group_id, events_topic, warm, records, f"{release}-{schema.pipeline}-load", cpu
        )
        ends = [x.get("last_commit_monotonic_s") for x in ray.get(coord.status.remote())["workers"]]
    finally:
        stop_coordinator(coord)
    if None in ends:
        raise RuntimeError(f"a worker of {schema.pipeline} reported no commit: {ends}")
    return timed_run(n, w, max(ends), w["cpu_noticed"]), events_topic, config.scores_topic


def raw_window(settings, pipeline: str, warm, records, release: str, fetch: dict) -> Run:
    """The bare kafka-python pass-through (:class:`io_floor.RawRelays`) over the same released backlog: the
    window ends when the later of its two processes had its last relayed message acknowledged. CPU: the two
    processes', from just before the release (as the workers') to their end. Its topics
    (``<pipeline>.<release>.*``) are left for the caller to check and drop."""
    from io_floor import RawRelays

    from rnnstream.workers.kafka_io import TopicAdmin

    topic, out = f"{pipeline}.{release}.events", f"{pipeline}.{release}.raw"
    with TopicAdmin(settings) as admin:
        admin.create_topics([topic, out], e2e.PARTITIONS)
    relays = RawRelays(settings, topic, out, _per_partition(warm), _per_partition(records), fetch)
    try:
        w = release_backlog(
            settings, "", topic, warm, records, f"{release}-{pipeline}-load", relays.cpu,
            warmed=relays.warmed, finished=relays.finished,
        )  # fmt: skip
    finally:
        relays.close()
    return timed_run(len(records), w, relays.end, relays.cpu_end)


def _per_partition(records) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in records:
        counts[r[0]] = counts.get(r[0], 0) + 1
    return counts
