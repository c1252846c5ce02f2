"""The end-to-end benchmark's latency part (:mod:`e2e_throughput` ``--only latency``, and after the
throughput in a full run): Arrow events sent at a paced rate, the scored latency beside its two floors
measured in the same run with the same messages and pace.

- ``p50_ms`` / ``p99_ms``: an event's send -> its score fetched by a ``read_committed`` reader of the scores
  topic in its own process (:mod:`score_latency`: two broker hops, the batch, scoring and the commit), after
  a warm-up of a quarter of the run at the same rate;
- ``broker_p50_ms`` / ``broker_p99_ms``: the bare broker's round trip: sent -> fetched by a plain consumer in
  its own process with the workers' fetch wait (one hop: no decoding, no model, no transactions): the floor
  the scored latency is measured against; the consumer's settings are the score reader's and the workers'
  (fetch wait 2 ms, 8,192 records a poll, 50 ms poll timeout), and every timing process freezes its imports'
  objects out of the garbage collector alike; ``p99_over_broker_ms``: the gap the target is about;
- ``alo_p50_ms`` / ``alo_p99_ms`` / ``alo_p99_over_broker_ms``: the same scored latency with the workers'
  transactions off (``rnnstream serve --no-transactions``: scores at least once, visible as soon as the
  broker appends them, the offsets committed after every send of the batch was acknowledged): what a
  deployment that favours latency over exactly-once scores gets, against the same broker round trip;
- ``txn_floor_p50_ms`` / ``txn_floor_p99_ms``: the floor with exactly once: a bare kafka-python relay
  (consume -> transactional produce -> offsets in the transaction -> commit, one transaction a poll, its own
  process) read by a ``read_committed`` reader, from the original send: what the two hops and the commit
  cost on this broker without anything of rnnstream;
- ``worker_fetch_p99_ms`` / ``worker_commit_p99_ms`` / ``worker_commit_wait_p99_ms`` /
  ``worker_checkpoint_max_ms``: where the scored run's time went inside the workers (their own metrics, the
  worst worker, warm-up included): a message's send -> the loop polled it (the broker hop plus the wait
  behind the loop's cycle), a transaction commit (it runs in the background while the loop scores the next
  batch), how long the loop then waited for it before sending that batch's scores, the longest checkpoint
  (its copy on the loop and its write in the background);
- ``cpu_busy`` / ``broker_cpu_busy`` / ``txn_floor_cpu_busy``: the share of the machine's cores busy while
  each run's measured events were sent (:mod:`cpu_window`), and ``workers_cpu_cores``: the scored run's
  workers' CPU seconds a second then. The floors run on their own, without the workers: on a 2-core
  machine the scored run's tail is CPU queueing of a machine its own processes keep nearly saturated
  (README).

The workers commit as soon as a batch is scored while they keep up, at least every 50 ms when behind (a score
is visible to ``read_committed`` readers only once its transaction commits); ``overlap_commits`` runs a
commit while the next batch is scored. The floors are measured by :mod:`io_floor`.

Ray runs without its dashboard (:func:`e2e_fixtures.broker_and_ray` starts it through ``init_ray``, which
passes ``include_dashboard=False``): on a 2-core machine the dashboard costs ~9% of a core during these runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from cpu_window import CpuWindow
from e2e_fixtures import (
    PARTITIONS,
    create_topics,
    drop_topics,
    make_events,
    make_schema,
    run_workers,
    wait_committed,
)
from io_floor import broker_round_trip_ms, send_paced, txn_relay_round_trip_ms
from score_latency import scored_latency_ms


def latency_figures(
    settings, handle, rate: float, seconds: float, tmp: Path, overlap_commits: bool, log: Callable
) -> dict[str, float]:
    """The scored latency at ``rate`` events/s for ``seconds``, its floors at the same rate and the workers'
    split of it: :func:`latency_fields` then the ``worker_*`` figures of :func:`latency_at_rate`."""
    log(f"latency at {rate:.0f} events/s ...")
    p50, p99, split = latency_at_rate(
        settings, make_schema("bench-lat"), handle, rate, seconds, tmp, overlap_commits
    )
    log(f"latency at {rate:.0f} events/s, transactions off (at least once) ...")
    alo_p50, alo_p99, _ = latency_at_rate(
        settings, make_schema("bench-lat-alo"), handle, rate, seconds, tmp, transactions=False
    )
    log(f"bare broker round trip at {rate:.0f} events/s ...")
    broker_p50, broker_p99, broker_busy = broker_latency(settings, rate, seconds)
    log(f"bare exactly-once relay at {rate:.0f} events/s ...")
    *txn, txn_busy = txn_floor_latency(settings, rate, seconds)
    busy = {"broker_cpu_busy": round(broker_busy, 3), "txn_floor_cpu_busy": round(txn_busy, 3)}
    alo = {
        "alo_p50_ms": round(alo_p50, 1),
        "alo_p99_ms": round(alo_p99, 1),
        "alo_p99_over_broker_ms": round(alo_p99 - broker_p99, 1),
    }
    return {**latency_fields(p50, p99, broker_p50, broker_p99, tuple(txn)), **alo, **split, **busy}


def latency_fields(
    p50: float, p99: float, broker_p50: float, broker_p99: float, txn: tuple[float, float]
) -> dict[str, float]:
    """The scored latency beside the bare broker's and the bare exactly-once relay's, and the p99 gap the
    target is about (ms)."""
    return {
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "broker_p50_ms": round(broker_p50, 1),
        "broker_p99_ms": round(broker_p99, 1),
        "p99_over_broker_ms": round(p99 - broker_p99, 1),
        "txn_floor_p50_ms": round(txn[0], 1),
        "txn_floor_p99_ms": round(txn[1], 1),
    }


def latency_at_rate(
    settings,
    schema,
    handle,
    rate: float,
    seconds: float,
    tmp: Path,
    overlap_commits: bool = False,
    transactions: bool = True,
) -> tuple[float, float, dict[str, float]]:
    """(p50, p99) ms from an event's send to its score read by a read_committed reader (:mod:`score_latency`),
    Arrow events sent at ``rate`` for ``seconds`` after a warm-up of a quarter of that at the same rate; and
    the workers' own split (the worst worker's, warm-up included, :class:`WorkerMetrics`):
    ``worker_fetch_p99_ms`` (a message's send -> the worker's loop polled it), ``worker_commit_p99_ms`` (a
    transaction commit), ``worker_commit_wait_p99_ms`` (the loop waiting for one) and
    ``worker_checkpoint_max_ms`` (the longest checkpoint); ``cpu_busy`` (the machine's share of cores busy
    while the measured events were sent) and ``workers_cpu_cores`` (the workers' CPU then). ``transactions``
    False runs the workers at least once (``--no-transactions``)."""
    import ray

    from rnnstream.workers.serving import stop_coordinator

    create_topics(settings, schema.pipeline)
    # latency settings: commit as soon as a batch is scored while keeping up, at least every 50 ms behind
    config, coord = run_workers(
        settings,
        schema,
        handle,
        tmp / f"ckpt-{schema.pipeline}",
        transactions=transactions,
        max_batch_events=8192,
        batch_linger_ms=2,
        commit_interval_ms=50,
        overlap_commits=overlap_commits,
    )
    now = int(time.time() * 1000)
    warm = make_events(schema, int(rate * seconds / 4), 20_000, seed=7, start_ms=now)
    table = make_events(schema, int(rate * seconds), 20_000, seed=3, start_ms=now + warm.num_rows)

    def paced(t: pa.Table) -> int:
        send_paced(settings, schema, t, rate)
        return t.num_rows

    try:
        window = CpuWindow(ray.get(coord.worker_pids.remote()).values())

        def measured() -> int:
            with window:
                return paced(table)

        p50, p99 = scored_latency_ms(
            settings,
            config.scores_topic,
            config.events_topic,
            PARTITIONS,
            warm=lambda: paced(warm),
            send=measured,
            wait_scored=lambda: wait_committed(settings, config.group_id, config.events_topic),
        )
        workers = ray.get(coord.status.remote())["workers"]
        split = {
            f"worker_{k}_ms": round(max(w.get(m) or 0.0 for w in workers), 1)
            for k, m in (
                ("fetch_p99", "latency_fetch_p99_ms"),
                ("commit_p99", "commit_p99_ms"),
                ("commit_wait_p99", "commit_wait_p99_ms"),
                ("checkpoint_max", "checkpoint_max_ms"),
            )
        }
        split["cpu_busy"] = round(window.busy(), 3)
        split["workers_cpu_cores"] = round(window.cores(), 2)
        return p50, p99, split
    finally:
        stop_coordinator(coord)
        drop_topics(settings, f"{schema.pipeline}.")


def broker_latency(settings, rate: float, seconds: float) -> tuple[float, float, float]:
    """(p50, p99) ms of the bare broker round trip with the latency run's messages and pace, and the
    machine's share of cores busy while they were sent (:class:`CpuWindow`)."""
    rtt = make_schema("bench-broker-rtt")
    create_topics(settings, rtt.pipeline)
    table = make_events(rtt, int(rate * seconds), 20_000, seed=3, start_ms=int(time.time() * 1000))
    window = CpuWindow()

    def send() -> None:
        with window:
            send_paced(settings, rtt, table, rate)

    p50, p99 = broker_round_trip_ms(settings, f"{rtt.pipeline}.events", PARTITIONS, send)
    drop_topics(settings, f"{rtt.pipeline}.")
    return p50, p99, window.busy()


def txn_floor_latency(settings, rate: float, seconds: float) -> tuple[float, float, float]:
    """(p50, p99) ms of the bare exactly-once relay (:func:`io_floor.txn_relay_round_trip_ms`) with the
    latency run's messages and pace: two broker hops and a transaction commit, nothing of rnnstream; and the
    machine's share of cores busy while they were sent."""
    txn = make_schema("bench-txn-rtt")
    create_topics(settings, txn.pipeline)
    table = make_events(txn, int(rate * seconds), 20_000, seed=3, start_ms=int(time.time() * 1000))
    window = CpuWindow()

    def send() -> None:
        with window:
            send_paced(settings, txn, table, rate)

    events, raw = f"{txn.pipeline}.events", f"{txn.pipeline}.raw"
    p50, p99 = txn_relay_round_trip_ms(settings, events, raw, PARTITIONS, send)
    drop_topics(settings, f"{txn.pipeline}.")
    return p50, p99, window.busy()
