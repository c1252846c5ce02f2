"""Scored latency as a downstream reader sees it: an event's send -> its score fetched by a ``read_committed``
consumer of the scores topic (in its own process, like the broker round trip of :mod:`io_floor`).

With exactly once a score is readable only once its transaction commits, so this is the latency a user of
the scores gets: the broker hop to the worker, the micro-batch, scoring, the commit, and the broker hop to the
reader. Each score carries its event's partition and offset; the event message's create time (set by the
sender) is read back from the events topic, so the clock is the sender's, as in the round trip.

The workers are warmed first (a short run at the same rate, scored and committed before the measured events
are sent): the first transaction of a worker (coordinator lookups) and its first batch are a start-up cost,
not a latency at a rate; the round trip's consumer is likewise connected before its messages are sent.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

import numpy as np


def _score_reader(bootstrap: str, topic: str, partitions: int, ready, expect, out) -> None:
    """Fetch every score of ``topic`` (read_committed) as it becomes visible; put (partition, offset,
    fetch ms) arrays, one row per score."""
    import gc
    import time

    from io_floor import timing_consumer
    from kafka import TopicPartition

    from rnnstream.workers.score_codec import decode_scores

    c = timing_consumer(bootstrap, auto_offset_reset="earliest")
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    for tp in tps:
        c.position(tp)
    gc.freeze()  # as every reader of io_floor: no full collection of the imports while timing
    ready.put(True)
    got: list[tuple[np.ndarray, np.ndarray, float]] = []
    n = 0
    total = None
    while total is None or n < total:
        for msgs in c.poll(timeout_ms=50).values():
            now = time.time() * 1000.0
            for m in msgs:
                t = decode_scores(m.value, m.headers)
                got.append((t.column("partition").to_numpy(), t.column("offset").to_numpy(), now))
                n += t.num_rows
        if total is None and not expect.empty():
            total = expect.get()
    c.close()
    parts = np.concatenate([g[0] for g in got]) if got else np.zeros(0, np.int32)
    offs = np.concatenate([g[1] for g in got]) if got else np.zeros(0, np.int64)
    fetched = np.concatenate([np.full(len(g[0]), g[2]) for g in got]) if got else np.zeros(0)
    out.put((parts, offs, fetched))


def _send_times(settings, events_topic: str, partitions: int) -> list[np.ndarray]:
    """Per partition: each event message's create time (ms), indexed by its offset."""
    from rnnstream.workers.score_verifier import read_topic

    msgs = read_topic(settings, events_topic, read_committed=False)
    ends = [0] * partitions
    for m in msgs:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    times = [np.full(e, np.nan) for e in ends]
    for m in msgs:
        times[m.partition][m.offset] = m.timestamp
    return times


def scored_latency_ms(
    settings,
    scores_topic: str,
    events_topic: str,
    partitions: int,
    warm: Callable[[], int],
    send: Callable[[], int],
    wait_scored: Callable[[], None],
) -> tuple[float, float]:
    """(p50, p99) ms from each measured event's send to its score fetched by a read_committed reader.

    ``warm()`` and ``send()`` send events and return how many; ``wait_scored()`` returns once the workers
    committed every event sent. Only the events of ``send()`` are counted."""
    import time

    ctx = mp.get_context("spawn")
    ready, expect, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    args = (settings.bootstrap_servers, scores_topic, partitions, ready, expect, out)
    proc = ctx.Process(target=_score_reader, args=args)
    proc.start()
    try:
        ready.get(timeout=120)
        n = warm()
        wait_scored()
        since_ms = time.time() * 1000.0
        n += send()
        wait_scored()
        expect.put(n)
        parts, offs, fetched = out.get(timeout=300)
    finally:
        proc.join(timeout=30)
    times = _send_times(settings, events_topic, partitions)
    sent = np.full(len(offs), np.nan)
    for p in range(partitions):
        mine = parts == p
        sent[mine] = times[p][offs[mine]]
    measured = sent >= since_ms
    if not measured.any():
        raise RuntimeError("no score of the measured events was read")
    lat = fetched[measured] - sent[measured]
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
