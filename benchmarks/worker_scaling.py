"""Throughput with 1, 2 and 4 workers on the same 4-partition topic, and what it costs in CPU (issue 15).

One embedded broker, one local Ray, the GRU(32->64) model of ``e2e_throughput``; for each worker count the
same events (Arrow messages by default, ``--encoding json``) go to a fresh pipeline's events topic and are
scored end to end (exactly once: transactions, checkpoints). Per run: events/s (wall clock from the workers'
start to the group's last commit), the CPU seconds the worker processes spent (user + system, read from
``/proc`` through psutil at start and end: what a cluster bills), CPU seconds per million events, and events
per CPU-second. On a 2-core machine the wall-clock speed-up is bounded by the cores, so events per
CPU-second is the figure that shows whether more workers waste work.

    python benchmarks/worker_scaling.py [--quick] [--json] [--encoding arrow|json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_fixtures import (  # the benchmark set-up beside this file
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

WORKER_COUNTS = (1, 2, 4)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def scaling_run(settings, handle, workers: int, n: int, n_keys: int, encoding: str, tmp: Path) -> dict:
    """Score ``n`` events with ``workers`` workers: events/s and the workers' CPU seconds."""
    import ray

    from rnnstream.workers.serving import stop_coordinator

    schema = make_schema(f"bench-scale-{workers}")
    create_topics(settings, schema.pipeline)
    start = int(time.time() * 1000) - 3_600_000
    produce(settings, schema, make_events(schema, n, n_keys, seed=7, start_ms=start), encoding)
    config, coord = run_workers(settings, schema, handle, tmp / f"ckpt-scale-{workers}", workers=workers)
    t0 = time.monotonic()
    pids = list(ray.get(coord.worker_pids.remote()).values())
    cpu0 = cpu_seconds(pids)
    t1 = wait_committed(settings, config.group_id, config.events_topic)
    cpu = cpu_seconds(pids) - cpu0
    stop_coordinator(coord)
    drop_topics(settings, f"{schema.pipeline}.")  # the next count meets a broker of the same size
    return {
        "workers": workers,
        "eps": round(n / (t1 - t0)),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million": round(cpu / n * 1e6, 2),
        "events_per_cpu_s": round(n / cpu) if cpu > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--encoding", choices=("arrow", "json"), default="arrow")
    args = ap.parse_args(argv)
    n = 100_000 if args.quick else 400_000
    n_keys = 100_000
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    runs = []
    with broker_and_ray("rnnstream-scaling-") as (tmp, settings):
        _, handle = seeded_model(tmp)
        for workers in WORKER_COUNTS:
            log(f"{workers} worker(s): {n} {args.encoding} events ...")
            runs.append(scaling_run(settings, handle, workers, n, n_keys, args.encoding, tmp))
    one = runs[0]["eps"]
    for r in runs:
        r["speedup"] = round(r["eps"] / one, 2)
    result = {"encoding": args.encoding, "events": n, "keys": n_keys, "cpus": os.cpu_count(), "runs": runs}
    if args.json:
        print_result(result, True)
        return 0
    print(f"{n:,} {args.encoding} events, {n_keys:,} keys, 4 partitions, {os.cpu_count()} CPUs")
    head = ("workers", "events/s", "speed-up", "worker CPU s", "CPU s / 1M", "events/CPU-s")
    print("{:>7} {:>10} {:>8} {:>12} {:>10} {:>12}".format(*head))
    for r in runs:
        print(
            f"{r['workers']:>7} {r['eps']:>10,} {r['speedup']:>8.2f} {r['cpu_s']:>12.2f} "
            f"{r['cpu_s_per_million']:>10.2f} {r['events_per_cpu_s'] or 0:>12,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
