"""The I/O floors the end-to-end benchmark measures rnnstream against, on the same broker in the same run.

- :class:`RawRelays`: a bare kafka-python pass-through (2 processes, each consuming 2 partitions and
  producing one output message per input message, same key and value, to the same partition number: no
  decoding, no model, no state, no transactions) over a backlog released by :mod:`release_window`, which
  times it as it times rnnstream's workers;
- :func:`broker_round_trip_ms`: the bare broker's round trip, messages sent at a given pace -> fetched by a
  plain consumer in its own process with the workers' fetch wait;
- :func:`txn_relay_round_trip_ms`: the floor with exactly once: the same messages relayed by a bare
  kafka-python consume -> transactional produce -> ``send_offsets_to_transaction`` -> commit loop (no
  decoding, no model) and fetched by a ``read_committed`` reader, timed from the original send (two hops and
  a commit).

Every process here (and the sender) freezes what it imported before it measures (``gc.freeze``): a full
collection of a process that imported kafka-python, pyarrow and (the sender) Ray and torch walks ~10^5
objects, tens to hundreds of ms in which the timestamps of a reader stand still; the pipeline's workers do
the same (:mod:`rnnstream.workers.gc_pauses`), so the floors and the pipeline are measured alike.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa


def partition_counts(settings, topic: str, partitions: int) -> dict[int, int]:
    """Messages in each partition of ``topic`` (its end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: int(v) for tp, v in c.end_offsets(tps).items()}
    finally:
        c.close()


def send_paced(settings, schema, table: pa.Table, rate: float) -> None:
    """Send ``table`` as Arrow messages at ``rate`` events/s: 50 sends a second, each flushed."""
    from rnnstream.workers.event_producer import EventProducer

    chunk = max(100, int(rate / 50))
    with EventProducer(settings, schema, events_per_message=min(chunk, 1000)) as p:
        gc.freeze()
        t0 = time.monotonic()
        for i in range(0, table.num_rows, chunk):
            p.send_arrow(table.slice(i, chunk))
            p.flush()
            ahead = (i + chunk) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def _raw_relay(
    bootstrap: str, topic: str, out_topic: str, parts: list[int], warm_n: int, n: int, fetch: dict, q
) -> None:
    """The pass-through of :class:`RawRelays`: relay ``warm_n`` messages (the warm-up), report, then ``n``
    more, and report when the last one was acknowledged (monotonic) and the process's CPU seconds then."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **{"isolation_level": "read_committed", **fetch},  # the backlog is released in one transaction
    )
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
    tps = [TopicPartition(topic, x) for x in parts]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    for tp in tps:
        c.position(tp)
    gc.freeze()
    q.put(("ready", 0.0, 0.0))
    got = 0
    for want, what in ((warm_n, "warm"), (warm_n + n, "done")):
        while got < want:
            for tp, msgs in c.poll(timeout_ms=50).items():
                for m in msgs:
                    p.send(out_topic, value=m.value, key=m.key, partition=tp.partition)
                got += len(msgs)
        p.flush()
        q.put((what, time.monotonic(), time.process_time()))
    c.close()
    p.close()


class RawRelays:
    """The bare pass-through for a released backlog (:mod:`release_window`): 2 processes of 2 partitions
    each (as rnnstream's 2 workers), started on the empty ``topic`` with the workers' fetch settings
    (``read_committed``, fetch wait, records a poll, fetch sizes), each relaying every message to the same
    partition of ``out_topic`` (no decoding, no model, no state, no transactions). ``warm_counts`` /
    ``counts``: the warm-up's and the backlog's messages in each partition."""

    GROUPS = ([0, 2], [1, 3])

    def __init__(
        self, settings, topic: str, out_topic: str, warm_counts: dict, counts: dict, fetch: dict
    ) -> None:
        ctx = mp.get_context("spawn")
        self._queues = [ctx.Queue() for _ in self.GROUPS]
        self._procs = [
            ctx.Process(
                target=_raw_relay,
                args=(
                    settings.bootstrap_servers,
                    topic,
                    out_topic,
                    g,
                    sum(warm_counts.get(x, 0) for x in g),
                    sum(counts.get(x, 0) for x in g),
                    fetch,
                    q,
                ),
            )
            for g, q in zip(self.GROUPS, self._queues, strict=True)
        ]
        for pr in self._procs:
            pr.start()
        self._expect("ready", 120)

    def _expect(self, what: str, timeout_s: float) -> list[tuple[float, float]]:
        out = []
        for q in self._queues:
            got = q.get(timeout=timeout_s)
            if got[0] != what:
                raise RuntimeError(f"raw relay said {got[0]!r}, expected {what!r}")
            out.append(got[1:])
        return out

    def warmed(self, _ends=None) -> None:
        """Wait until both relayed the warm-up."""
        self._expect("warm", 180)

    def cpu(self) -> float:
        """Both processes' CPU seconds so far (user + system)."""
        import psutil

        return sum(sum(psutil.Process(pr.pid).cpu_times()[:2]) for pr in self._procs)

    def finished(self, _ends=None) -> float:
        """Wait until both relayed the backlog; now (monotonic). Then ``end`` / ``cpu_end`` hold the last
        acknowledgement's moment and both processes' CPU seconds at their ends (as :meth:`cpu` counts)."""
        res = self._expect("done", 600)
        self.end, self.cpu_end = max(t for t, _ in res), sum(c for _, c in res)
        return time.monotonic()

    def close(self) -> None:
        for pr in self._procs:
            pr.join(timeout=30)
            if pr.is_alive():
                pr.kill()


def timing_consumer(
    bootstrap: str,
    *,
    auto_offset_reset: str,
    isolation_level: str = "read_committed",
    fetch_wait_ms: int = 2,
    group_id: str | None = None,
):
    """A consumer with the settings every latency measurement here shares (the floors' readers, the relay
    and the score reader alike, so their round trips compare like for like): no auto-commit, a short fetch
    wait, 8,192 records a poll."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level=isolation_level,
        fetch_max_wait_ms=fetch_wait_ms,
        max_poll_records=8192,
    )


def _round_trip_consumer(
    bootstrap: str,
    topic: str,
    partitions: int,
    fetch_wait_ms: int,
    ready,
    expect,
    out,
    isolation_level: str = "read_uncommitted",
) -> None:
    """Fetch every message of ``topic`` as it arrives; put each one's ms from its create time to here."""
    from kafka import TopicPartition

    c = timing_consumer(
        bootstrap, auto_offset_reset="latest", isolation_level=isolation_level, fetch_wait_ms=fetch_wait_ms
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    for tp in tps:
        c.position(tp)  # offsets resolved before anything is produced
    gc.freeze()
    ready.put(True)
    lat: list[float] = []
    total = None
    while total is None or len(lat) < total:
        for msgs in c.poll(timeout_ms=50).values():
            now = time.time() * 1000.0
            lat.extend(now - m.timestamp for m in msgs)
        if total is None and not expect.empty():
            total = expect.get()
    c.close()
    out.put(lat)


def broker_round_trip_ms(
    settings, topic: str, partitions: int, send: Callable[[], None], fetch_wait_ms: int = 2
) -> tuple[float, float]:
    """(p50, p99) ms from each message's create time until a plain consumer in its own process fetched it,
    while ``send()`` produces to ``topic`` (the messages and pace of the latency run)."""
    ctx = mp.get_context("spawn")
    ready, expect, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    args = (settings.bootstrap_servers, topic, partitions, fetch_wait_ms, ready, expect, out)
    proc = ctx.Process(target=_round_trip_consumer, args=args)
    proc.start()
    try:
        ready.get(timeout=120)
        send()
        expect.put(sum(partition_counts(settings, topic, partitions).values()))
        lat = np.asarray(out.get(timeout=300))
    finally:
        proc.join(timeout=30)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def _txn_relay(bootstrap: str, topic: str, out_topic: str, partitions: int, ready, stop) -> None:
    """Relay every message of ``topic`` to the same partition of ``out_topic`` (its create time kept), one
    transaction a poll with the consumed offsets, as a bare exactly-once consume -> produce loop does."""
    from kafka import KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    group = f"{out_topic}-relay"
    c = timing_consumer(bootstrap, auto_offset_reset="latest", group_id=group)
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=group, linger_ms=2, batch_size=256 * 1024)
    p.init_transactions()
    tps = [TopicPartition(topic, x) for x in range(partitions)]
    c.assign(tps)
    warm = {tp: OffsetAndMetadata(c.position(tp), "", -1) for tp in tps}
    p.begin_transaction()  # the first transaction's coordinator look-ups, before anything is timed
    p.send_offsets_to_transaction(warm, group)
    p.commit_transaction()
    gc.freeze()
    ready.put(True)
    while stop.empty():
        got = c.poll(timeout_ms=50)
        if not got:
            continue
        p.begin_transaction()
        offsets = {}
        for tp, msgs in got.items():
            for m in msgs:
                p.send(out_topic, value=m.value, key=m.key, partition=tp.partition, timestamp_ms=m.timestamp)
            offsets[tp] = OffsetAndMetadata(msgs[-1].offset + 1, "", -1)
        p.send_offsets_to_transaction(offsets, group)
        p.commit_transaction()
    p.close()
    c.close()


def txn_relay_round_trip_ms(
    settings, topic: str, out_topic: str, partitions: int, send: Callable[[], None], fetch_wait_ms: int = 2
) -> tuple[float, float]:
    """(p50, p99) ms from each message's create time until a ``read_committed`` reader fetched its relayed
    copy: ``send()`` produces to ``topic``, a bare transactional relay (its own process) copies each message
    to ``out_topic`` in one transaction a poll, the reader (its own process) reads ``out_topic``."""
    ctx = mp.get_context("spawn")
    relay_ready, stop, ready, expect, out = (ctx.Queue() for _ in range(5))
    bootstrap = settings.bootstrap_servers
    relay = ctx.Process(target=_txn_relay, args=(bootstrap, topic, out_topic, partitions, relay_ready, stop))
    relay.start()
    reader = None
    try:
        relay_ready.get(timeout=120)
        args = (bootstrap, out_topic, partitions, fetch_wait_ms, ready, expect, out, "read_committed")
        reader = ctx.Process(target=_round_trip_consumer, args=args)
        reader.start()
        ready.get(timeout=120)
        before = sum(partition_counts(settings, topic, partitions).values())
        send()
        expect.put(sum(partition_counts(settings, topic, partitions).values()) - before)
        lat = np.asarray(out.get(timeout=300))
    finally:
        stop.put(True)
        relay.join(timeout=30)
        if reader is not None:
            reader.join(timeout=30)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
