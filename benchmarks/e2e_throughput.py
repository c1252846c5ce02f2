"""End-to-end scoring throughput, latency and recovery on the local embedded broker (issue 4).

One run, one broker, one GRU(32->64) model (31 float features + the time delta), 4 partitions:

- ``raw_eps``: the I/O floor: 2 processes, each consuming 2 partitions of the JSON events topic and producing
  one output message per input message (no decoding, no model, no state, no transactions);
- ``json_eps`` / ``arrow_eps``: rnnstream end to end with 2 workers (consumed -> scored -> scores written in
  Kafka transactions with the offsets -> checkpointed) over the same events as JSON and as Arrow messages;
- the latency figures (:mod:`paced_latency`): ``p50_ms`` / ``p99_ms``, an event's send -> its score read by
  a ``read_committed`` reader, beside the bare broker's round trip (``broker_p50_ms`` / ``broker_p99_ms``,
  ``p99_over_broker_ms``) and the bare exactly-once relay (``txn_floor_p50_ms`` / ``txn_floor_p99_ms``) at the
  same rate in the same run, the same scored latency with the workers' transactions off (``alo_p50_ms`` /
  ``alo_p99_ms`` / ``alo_p99_over_broker_ms``: at least once, ``serve --no-transactions``), and the
  workers' split (``worker_fetch_p99_ms``, ``worker_commit_p99_ms``, ``worker_commit_wait_p99_ms``,
  ``worker_checkpoint_max_ms``) and how busy the machine was while each run's
  events were sent (``cpu_busy``, ``broker_cpu_busy``, ``txn_floor_cpu_busy``, ``workers_cpu_cores``: the
  tail at these rates is CPU queueing, see :mod:`cpu_window`); Arrow events sent at half ``arrow_eps``
  (``--only latency``: at ``--rate``), and ``p50_ms_at_10k_eps`` / ``p99_ms_at_10k_eps`` at a fixed 10,000
  events/s, for comparing machines;
- ``recovery_s``: kill -9 of a worker holding 1,000,000 keys (100,000 with ``--quick``) -> scoring again
  with its restored state;
- ``json_vs_raw``: json_eps / raw_eps measured side by side in rounds (the order alternating), the median
  ratio (``json_vs_raw_rounds``: each round's; ``raw_eps_rounds`` / ``json_eps_rounds``: each side's);
  ``json_vs_raw_cpu``: events per CPU-second of rnnstream's 2 worker processes over the pass-through's 2
  (load on a shared machine moves wall time far more than CPU; ``*_cpu_us_per_event`` each side's);
  ``arrow_eps`` is the median of as many rounds (``arrow_cpu_us_per_event``: the workers' CPU an event).
  ``--only throughput`` runs these alone.

Every throughput run is timed alike (:mod:`release_window`, the peer benchmark's window): the run gets an
events topic of its own and its consumers (rnnstream's 2 workers, or the pass-through's 2 processes, with the
workers' fetch settings and ``read_committed``) start on it empty; a warm-up message a partition goes first
and the run waits until it went through (start-up, first fetch, first transaction: paid once by a service,
left out alike); then the backlog (the same messages every run) is released in one transaction, and the
window runs from that commit's return to the workers' last commit returning (each worker reports the moment)
or the pass-through's last message acknowledged; CPU is counted from just before the release (from the
warm-up, the pass-through's idle polls while the backlog was being sent doubled its CPU an event).
``*_window_s``: the median windows. Before (the clock started once the workers held their partitions, over
50,000 JSON and 100,000 Arrow events: 0.6-1.5 s), rnnstream's rounds swung 28k-68k events/s and 13-33 CPU-us
an event in one run: start-up, the first transaction and events scored before the clock (subtracted by a
lagging count) fell in or out of the window, while the pass-through's first fetch was outside its own; and
the Arrow CPU an event (2.4-5.4 us) was the CPU after the clock divided by all the events.

The floors (raw pass-through, broker round trip, exactly-once relay) are measured by :mod:`io_floor`.
Throughput runs commit every 250 ms; the latency runs as soon as a batch is scored while the workers keep
up, at least every 50 ms when behind (a score is visible to ``read_committed`` readers only once its
transaction commits). Ray runs without its dashboard (``include_dashboard=False``, through
:func:`e2e_fixtures.broker_and_ray`): it would cost ~9% of a core on a 2-core machine in the latency runs.

Targets (issue 15): json_vs_raw >= 0.8, arrow_eps >= 250000, p99_ms <= broker_p99_ms + 25, recovery_s < 10
with 1M keys.
``--quick`` uses fewer events (150,000 JSON, 400,000 Arrow; else 300,000 and 600,000); ``--json`` prints one
JSON object.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from e2e_fixtures import (
    LOAD_SLICE_EVENTS,
    WORKER_SETTINGS,
    broker_and_ray,
    create_topics,
    drop_topics,
    make_events,
    make_schema,
    print_result,
    produce,
    run_workers,
    seeded_model,
    wait_committed,
)
from paced_latency import latency_at_rate, latency_figures
from release_window import raw_window, release_records, rnnstream_window


def worker_fetch_settings() -> dict[str, Any]:
    """The scoring workers' consumer fetch settings (:func:`e2e_fixtures.run_workers`), for the bare
    pass-through: both sides fetch alike, only what they do with a message differs."""
    return {
        "fetch_max_wait_ms": WORKER_SETTINGS["batch_linger_ms"],
        "max_poll_records": WORKER_SETTINGS["max_poll_records"],
        "fetch_max_bytes": WORKER_SETTINGS["fetch_max_bytes"],
        "max_partition_fetch_bytes": WORKER_SETTINGS["max_partition_fetch_bytes"],
    }


def json_vs_raw(settings, schema, handle, warm, records, rounds: int, tmp: Path, log) -> dict[str, Any]:
    """rnnstream's 2 workers and the bare pass-through's 2 processes over the same released JSON backlog
    (:mod:`release_window`: each run its own topic, warmed, the backlog released in one transaction, timed
    from the release to the last commit / acknowledgement): ``rounds`` rounds, the order alternating, each a
    ratio; the medians decide (machine noise moves both runs of a round alike). Also CPU: events per
    CPU-second of each, and their ratio."""
    n = len(records)
    raw, ours = [], []
    for r in range(rounds):
        runs = {}
        for which in ("raw", "rnnstream") if r % 2 == 0 else ("rnnstream", "raw"):
            log(f"round {r + 1}/{rounds}: {which} over {n} JSON events ...")
            release = f"raw{r}" if which == "raw" else f"r{r}"
            if which == "raw":
                fetch = worker_fetch_settings()
                runs[which] = raw_window(settings, schema.pipeline, warm, records, release, fetch)
            else:
                runs[which] = rnnstream_window(settings, schema, handle, warm, records, n, release, tmp)
            drop_topics(settings, f"{schema.pipeline}.{release}.")  # measured: keep the broker small
        raw.append(runs["raw"])
        ours.append(runs["rnnstream"])
        log(f"  raw {describe(runs['raw'])}\n  rnnstream {describe(runs['rnnstream'])}")
    return {
        "raw_eps": round(float(np.median([x.eps for x in raw]))),
        "json_eps": round(float(np.median([x.eps for x in ours]))),
        "json_vs_raw": round(float(np.median([a.eps / b.eps for a, b in zip(ours, raw, strict=True)])), 3),
        "json_vs_raw_rounds": [round(a.eps / b.eps, 3) for a, b in zip(ours, raw, strict=True)],
        "raw_eps_rounds": [round(x.eps) for x in raw],
        "json_eps_rounds": [round(x.eps) for x in ours],
        "json_vs_raw_cpu": round(
            float(np.median([a.eps_per_cpu_s / b.eps_per_cpu_s for a, b in zip(ours, raw, strict=True)])), 3
        ),
        "raw_cpu_us_per_event": round(float(np.median([1e6 / x.eps_per_cpu_s for x in raw])), 2),
        "json_cpu_us_per_event": round(float(np.median([1e6 / x.eps_per_cpu_s for x in ours])), 2),
        "raw_window_s": round(float(np.median([x.window_s for x in raw])), 3),
        "json_window_s": round(float(np.median([x.window_s for x in ours])), 3),
    }


def arrow_rounds(settings, schema, handle, warm, records, n: int, rounds: int, tmp: Path, log) -> dict:
    """rnnstream's 2 workers over the same released Arrow backlog, ``rounds`` times: the median events/s
    and CPU-us an event (the two worker processes')."""
    runs = []
    for r in range(rounds):
        log(f"arrow round {r + 1}/{rounds}: {n} events ...")
        runs.append(rnnstream_window(settings, schema, handle, warm, records, n, f"r{r}", tmp))
        drop_topics(settings, f"{schema.pipeline}.r{r}.")
        log(f"  rnnstream {describe(runs[-1])}")
    return {
        "arrow_eps": round(float(np.median([x.eps for x in runs]))),
        "arrow_eps_rounds": [round(x.eps) for x in runs],
        "arrow_cpu_us_per_event": round(float(np.median([1e6 / x.eps_per_cpu_s for x in runs])), 2),
        "arrow_window_s": round(float(np.median([x.window_s for x in runs])), 3),
    }


def describe(run) -> str:
    return (
        f"{run.eps:,.0f} ev/s ({1e6 / run.eps_per_cpu_s:.1f} CPU-us/ev; window {run.window_s:.3f} s, "
        f"warm-up {run.warm_s:.2f} s, release {run.release_s:.3f} s, notice {run.notice_s:.3f} s)"
    )


def recovery_seconds(settings, schema, handle, n_keys: int, tmp: Path) -> float:
    import ray

    from rnnstream.workers.serving import stop_coordinator

    create_topics(settings, schema.pipeline)
    start = int(time.time() * 1000) - 60_000
    table = make_events(schema, n_keys, n_keys, seed=4, start_ms=start)
    # one event per key: every key lands in state (keys k0..k{n-1} in random order)
    keys = pa.array([f"k{i}" for i in np.random.default_rng(5).permutation(n_keys)], pa.string())
    table = table.set_column(0, "key", keys)
    config, coord = run_workers(settings, schema, handle, tmp / "ckpt-rec", workers=1)
    # the keys go in slices, each scored and committed before the next: the embedded broker answers a fetch
    # with the partitions' whole backlog whatever fetch_max_bytes asks, and kafka-python drops a response over
    # its receive_message_max_bytes (100 MB; 1M Arrow events are ~130 MB): a 1M-event backlog is never read
    for i in range(0, n_keys, LOAD_SLICE_EVENTS):
        produce(settings, schema, table.slice(i, LOAD_SLICE_EVENTS), "arrow")
        try:
            wait_committed(settings, config.group_id, config.events_topic)
        except TimeoutError:
            st = ray.get(coord.status.remote())["workers"][0]
            print(
                f"recovery load stalled: resets={st.get('resets')} last_error={st.get('last_error')}",
                file=sys.stderr,
            )
            raise
    ray.get(coord.final_checkpoint.remote())
    keys_held = ray.get(coord.status.remote())["workers"][0]["keys"]
    pid = ray.get(coord.worker_pids.remote())[0]
    more = make_events(schema, 1000, n_keys, seed=6, start_ms=start + n_keys)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    produce(settings, schema, more, "arrow")
    t1 = wait_committed(settings, config.group_id, config.events_topic, timeout_s=120)
    st = ray.get(coord.status.remote())["workers"][0]
    stop_coordinator(coord)
    if keys_held < n_keys or st["restores"] < 1:
        raise RuntimeError(f"recovery run held {keys_held} keys, restored {st['restores']} partitions")
    return t1 - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--only", choices=("all", "throughput", "recovery", "latency"), default="all", help="one part only"
    )
    ap.add_argument("--rounds", type=int, help="throughput rounds, medians reported (default 3, 5 full)")
    ap.add_argument("--rate", type=float, default=40_000.0, help="events/s of --only latency")
    ap.add_argument(
        "--overlap-commits",
        action="store_true",
        help="latency runs with overlap_commits on (a commit runs while the next batch is scored)",
    )
    ap.add_argument(
        "--recovery-keys", type=int, help="keys the recovered worker holds (default 1M, 100k quick)"
    )
    args = ap.parse_args(argv)

    n_json = 150_000 if args.quick else 300_000
    rounds = args.rounds or (3 if args.quick else 5)
    n_arrow = 400_000 if args.quick else 600_000
    lat_seconds = 4.0 if args.quick else 10.0
    rec_keys = args.recovery_keys or (100_000 if args.quick else 1_000_000)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.only == "recovery":
        with broker_and_ray("rnnstream-e2e-") as (tmp, settings):
            _, handle = seeded_model(tmp)
            log(f"recovery with {rec_keys} keys ...")
            rec = recovery_seconds(settings, make_schema("bench-rec"), handle, rec_keys, tmp)
        result = {
            "recovery_s": round(rec, 2),
            "recovery_keys": rec_keys,
            "targets": {"recovery_s": "< 10 (1M keys)"},
        }
        print_result(result, args.json, width=14)
        return 0
    if args.only == "latency":
        with broker_and_ray("rnnstream-e2e-") as (tmp, settings):
            _, handle = seeded_model(tmp)
            latency = latency_figures(
                settings, handle, args.rate, lat_seconds, tmp, args.overlap_commits, log
            )
        result = {**latency, "latency_rate_eps": round(args.rate)}
        print_result(result, args.json, width=18)
        return 0
    with broker_and_ray("rnnstream-e2e-") as (tmp, settings):
        _, handle = seeded_model(tmp)
        start = int(time.time() * 1000) - 3_600_000

        schema = make_schema("bench-json")
        table = make_events(schema, n_json, 10_000, seed=1, start_ms=start)
        warm_table = make_events(schema, 64, 64, seed=9, start_ms=start - 60_000, key_prefix="warm")
        warm, records = release_records(settings, schema, warm_table, table, "json")
        json_figures = json_vs_raw(settings, schema, handle, warm, records, rounds, tmp, log)

        schema = make_schema("bench-arrow")
        table = make_events(schema, n_arrow, 10_000, seed=2, start_ms=start)
        warm_table = make_events(schema, 64, 64, seed=9, start_ms=start - 60_000, key_prefix="warm")
        warm, records = release_records(settings, schema, warm_table, table, "arrow")
        throughput = {
            **json_figures,
            **arrow_rounds(settings, schema, handle, warm, records, n_arrow, rounds, tmp, log),
        }
        arrow_eps = throughput["arrow_eps"]
        if args.only == "throughput":
            targets = {"json_vs_raw": ">= 0.8", "arrow_eps": ">= 250000"}
            result = {**throughput, "events_json": n_json, "events_arrow": n_arrow, "rounds": rounds}
            print_result({**result, "targets": targets, "cpus": os.cpu_count()}, args.json, width=22)
            return 0

        latency = latency_figures(
            settings, handle, arrow_eps / 2, lat_seconds, tmp, args.overlap_commits, log
        )

        log("latency at 10000 events/s ...")
        p50_low, p99_low, _ = latency_at_rate(
            settings, make_schema("bench-lat-low"), handle, 10_000.0, lat_seconds, tmp, args.overlap_commits
        )

        log(f"recovery with {rec_keys} keys ...")
        rec = recovery_seconds(settings, make_schema("bench-rec"), handle, rec_keys, tmp)
    result = {
        **throughput,
        **latency,
        "recovery_s": round(rec, 2),
        "latency_rate_eps": round(arrow_eps / 2),
        "p50_ms_at_10k_eps": round(p50_low, 1),
        "p99_ms_at_10k_eps": round(p99_low, 1),
        "events_json": n_json,
        "events_arrow": n_arrow,
        "recovery_keys": rec_keys,
        "targets": {
            "json_vs_raw": ">= 0.8",
            "arrow_eps": ">= 250000",
            "p99_ms": "<= broker_p99_ms + 25",
            "alo_p99_ms": "<= broker_p99_ms + 25 (at least once)",
            "recovery_s": "< 10 (1M keys)",
        },
        "cpus": os.cpu_count(),
    }
    print_result(result, args.json, width=14)
    return 0


if __name__ == "__main__":
    sys.exit(main())
