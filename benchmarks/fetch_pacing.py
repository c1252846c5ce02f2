"""A worker's consumer under bursts of events, with and without its fetch pacing, side by side in one run.

The embedded broker answers an empty fetch at once, so between bursts kafka-python's consumer fetches over
and over; :mod:`rnnstream.workers.kafka_io_fetch_pacing` holds an empty answer until
``fetch_max_wait_ms`` after the request, as a broker's long poll would. Here a worker's own consumer
(:class:`WorkerClients`, polled as the worker's loop polls: ``poll_batch``, 4,096 events, 5 ms linger)
reads 2 partitions while a producer thread in the same process sends a burst every 20 ms (``--rate``
events/s, 100-byte records, timestamped at the send). Printed per side (medians over ``--repeats`` runs,
each in a process of its own, the sides alternating): the process's CPU-ms a second, fetches a second, and
p50 / p99 of send -> handed to the loop (ms).

    python benchmarks/fetch_pacing.py --quick [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

BURST_S = 0.02
SIDES = ("paced", "unpaced")


def child(bootstrap: str, side: str, rate: float, seconds: float) -> dict:
    import numpy as np
    from kafka import KafkaProducer

    from benchmarks.txn_cost import IdleConsumer

    consumer = IdleConsumer(bootstrap, 2, unpaced=side == "unpaced")
    clients = consumer.clients
    clients.consumer.seek_to_end()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    stop = threading.Event()
    per_burst = max(2, int(rate * BURST_S))

    def send() -> None:
        due = time.monotonic()
        while not stop.is_set():
            now_ms = int(time.time() * 1000)
            for j in range(per_burst):
                producer.send(clients.config.events_topic, b"x" * 100, partition=j % 2, timestamp_ms=now_ms)
            producer.flush()
            due += BURST_S
            time.sleep(max(0.0, due - time.monotonic()))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    latencies: list[float] = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:  # warm-up
            clients.poll_batch(4096, 5, 50)
        f0, cpu0, t0 = consumer.fetches, time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            got = clients.poll_batch(4096, 5, 50)
            now = time.time() * 1000
            latencies += [now - m.timestamp for msgs in got.values() for m in msgs]
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    finally:
        stop.set()
        sender.join()
        producer.close(timeout=5)
        consumer.close()
    lat = np.asarray(latencies)
    return {
        "cpu_ms_per_s": 1000 * cpu / wall,
        "fetches_per_s": (consumer.fetches - f0) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "events": len(lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats of 5 s a side")
    ap.add_argument("--json", action="store_true", help="one JSON object")
    ap.add_argument("--rate", type=float, default=10_000.0, help="events/s, sent in bursts every 20 ms")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.bootstrap, args.child, args.rate, args.seconds)), flush=True)
        return
    if args.quick:
        args.seconds, args.repeats = 5.0, 3

    from benchmarks.e2e_fixtures import print_result
    from benchmarks.txn_cost import PIPELINE
    from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
    from rnnstream.workers.kafka_io import TopicAdmin
    from rnnstream.workers.kafka_settings import KafkaSettings

    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory(prefix="fetchpacing-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "broker", port=free_port())
        broker.start()
        try:
            with TopicAdmin(KafkaSettings(bootstrap_servers=broker.bootstrap_servers)) as admin:
                admin.create_topics([f"{PIPELINE}.events", f"{PIPELINE}.scores"], 2)
            for r in range(args.repeats):
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    cmd = [sys.executable, __file__, "--child", side, "--bootstrap", broker.bootstrap_servers]
                    cmd += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
                    if out.returncode != 0:
                        raise RuntimeError(f"{side}: exit {out.returncode}: {out.stderr[-2000:]}")
                    runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    if not args.json:
                        print(f"  {side} #{r}: {runs[side][-1]}", flush=True)
        finally:
            broker.stop()
    result: dict = {"rate_eps": args.rate, "seconds": args.seconds, "repeats": args.repeats}
    for side in SIDES:
        for field in runs[side][0]:
            result[f"{side}_{field}"] = round(statistics.median(x[field] for x in runs[side]), 1)
    result["cpu_paced_vs_unpaced"] = round(result["paced_cpu_ms_per_s"] / result["unpaced_cpu_ms_per_s"], 3)
    print_result(result, args.json, width=30)


if __name__ == "__main__":
    main()
