"""The CPU of one exactly-once transaction: rnnstream's scoring worker path beside a bare kafka-python loop.

A scoring worker at 10k events/s commits ~50 transactions a second, each holding one micro-batch's scores and
the consumed offsets. Both sides here commit ``--txns`` such transactions on the embedded broker, each with
``--scores`` JSON score records (split over ``--partitions`` partitions, like a batch of one worker) and the
offsets of those partitions, one transaction after the other (a worker holds one open at a time):

- **ours**: the objects the worker uses, :class:`WorkerClients` (its consumer and transactional producer with
  the worker's settings) and its :class:`ScoresTransaction`: ``offer_offsets`` (attached ahead of scoring),
  ``begin``, ``send_records`` per partition (what :class:`ScoreEmitter` calls for JSON scores), ``commit``;
- **bare**: a ``KafkaProducer(transactional_id=...)`` with kafka-python's defaults: ``begin_transaction``,
  one ``send`` a record, ``send_offsets_to_transaction``, ``commit_transaction``;
- **ours_stock**: ours with kafka-python's own metric sensors and selector in place of
  :func:`rnnstream.workers.kafka_client_lean.lean_client_kwargs` (the worker's clients before them).

Each side runs in a process of its own (so ``time.process_time()`` counts every thread of its clients, and
nothing else), each side going first in turn, ``--repeats`` times; medians are printed. The CPU is also split
into the caller's thread and the rest (kafka-python's network thread). The broker's CPU over each timed window
comes from its own process (psutil, 10 ms ticks). Printed: CPU-ms a transaction, wall ms a transaction, the
broker's CPU-ms a transaction, and ours / bare, ours / ours_stock.

    python benchmarks/txn_cost.py --quick [--json]
"""

from __future__ import annotations

import argparse
import json
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

PIPELINE = "txncost"
WARMUP_TXNS = 20
SIDES = ("ours", "ours_stock", "bare")


def _score_arrays(n: int, partition: int):
    """``n`` JSON score records (keys, values as Arrow binary arrays) as the worker encodes them."""
    import numpy as np
    import pyarrow as pa

    from rnnstream.workers.score_codec import scores_to_json_array

    rng = np.random.default_rng(partition)
    keys = pa.array([f"k{i}" for i in rng.integers(0, 100_000, n)], pa.string())
    values = scores_to_json_array(
        keys,
        np.arange(n, dtype=np.int64) + 1_700_000_000_000,
        rng.random((n, 1), dtype=np.float32),
        ("score",),
        "bench:gru-32-64",
        f"{PIPELINE}.events",
        partition,
        np.arange(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
    )
    return keys.cast(pa.binary()), values


class Ours:
    """The worker's own clients and transaction object (``WorkerClients``, ``ScoresTransaction``)."""

    def __init__(
        self, bootstrap: str, partitions: int, per_partition: int, slot: int, stock: bool = False
    ) -> None:
        from rnnstream.rnn_core.event_schema import EventSchema
        from rnnstream.workers.kafka_settings import KafkaSettings
        from rnnstream.workers.worker_clients import WorkerClients
        from rnnstream.workers.worker_config import WorkerConfig

        schema = EventSchema(pipeline=PIPELINE, version=1, vectors=(("x", 4),))
        # stock: kafka-python's own metric sensors and selector instead of lean_client_kwargs (as before them)
        extra = {"metrics_enabled": True, "selector": selectors.DefaultSelector} if stock else {}
        config = WorkerConfig(
            pipeline=PIPELINE,
            schema=schema,
            kafka=KafkaSettings(bootstrap_servers=bootstrap, extra=extra),
            checkpoint_uri=tempfile.mkdtemp(prefix="txncost-"),
        )
        self.clients = WorkerClients(config, slot)
        self.topic = config.scores_topic
        self.arrays = {p: _score_arrays(per_partition, p) for p in range(partitions)}
        self.next = dict.fromkeys(range(partitions), 0)
        self.per_partition = per_partition

    def transaction(self) -> None:
        after = {p: o + self.per_partition for p, o in self.next.items()}
        self.clients.offer_offsets(after)  # the worker attaches them before scoring the batch
        self.clients.tx.begin()
        for p, (keys, values) in self.arrays.items():
            self.clients.tx.send_records(self.topic, p, keys, values)
        self.clients.commit(after)
        self.next = after

    def close(self) -> None:
        self.clients.close()


class Bare:
    """A bare kafka-python exactly-once loop, kafka-python's defaults."""

    def __init__(self, bootstrap: str, partitions: int, per_partition: int, slot: int) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"txncost-bare-{slot}")
        self.producer.init_transactions()
        self.topic = f"{PIPELINE}.scores"
        self.group = f"{PIPELINE}-bare"
        self.records = {}
        for p in range(partitions):
            keys, values = _score_arrays(per_partition, p)
            self.records[p] = list(zip(keys.to_pylist(), values.to_pylist(), strict=True))
        self.next = dict.fromkeys(range(partitions), 0)
        self.per_partition = per_partition

    def transaction(self) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        after = {p: o + self.per_partition for p, o in self.next.items()}
        self.producer.begin_transaction()
        for p, records in self.records.items():
            for k, v in records:
                self.producer.send(self.topic, value=v, key=k, partition=p)
        events = f"{PIPELINE}.events"
        offsets = {TopicPartition(events, p): OffsetAndMetadata(o, "", -1) for p, o in after.items()}
        self.producer.send_offsets_to_transaction(offsets, self.group)
        self.producer.commit_transaction()
        self.next = after

    def close(self) -> None:
        self.producer.close(timeout=5)


def child(args: argparse.Namespace) -> None:
    """One side in this process: connect, warm up, say ``warm``, wait for ``go``, time, print JSON."""
    import threading

    import psutil

    shape = (args.bootstrap, args.partitions, args.scores // args.partitions, args.slot)
    side = Bare(*shape) if args.child == "bare" else Ours(*shape, stock=args.child == "ours_stock")
    me, main_tid = psutil.Process(), threading.main_thread().native_id

    def main_thread_cpu() -> float:
        return sum(t.user_time + t.system_time for t in me.threads() if t.id == main_tid)

    try:
        for _ in range(WARMUP_TXNS):
            side.transaction()
        print("warm", flush=True)
        sys.stdin.readline()
        cpu0, main0, t0 = time.process_time(), main_thread_cpu(), time.perf_counter()
        for _ in range(args.txns):
            side.transaction()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        main = main_thread_cpu() - main0  # the caller's thread; the rest is kafka-python's network thread
        n = args.txns
        out = {"cpu_ms_per_txn": 1000 * cpu / n, "main_thread_cpu_ms_per_txn": 1000 * main / n}
        out["client_threads_cpu_ms_per_txn"] = 1000 * (cpu - main) / n
        out["wall_ms_per_txn"] = 1000 * wall / n
        print(json.dumps(out), flush=True)
    finally:
        side.close()


def run_side(name: str, bootstrap: str, args: argparse.Namespace, slot: int, broker_proc) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--bootstrap", bootstrap, "--slot", str(slot)]
    cmd += ["--txns", str(args.txns), "--scores", str(args.scores), "--partitions", str(args.partitions)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        if line.strip() != "warm":
            raise RuntimeError(f"{name}: no warm-up line (got {line!r}); exit {proc.wait(30)}")
        b0 = sum(broker_proc.cpu_times()[:2])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
        out["broker_cpu_ms_per_txn"] = 1000 * (sum(broker_proc.cpu_times()[:2]) - b0) / args.txns
        return out
    finally:
        proc.stdin.close()
        if proc.wait(60) != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 transactions, 3 repeats")
    ap.add_argument("--json", action="store_true", help="one JSON object")
    ap.add_argument("--txns", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scores", type=int, default=64, help="score records a transaction")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--only", choices=SIDES, help="one side only (e.g. under a profiler)")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.txns, args.repeats = 300, 3

    import psutil

    from benchmarks.e2e_fixtures import print_result
    from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
    from rnnstream.workers.kafka_io import TopicAdmin
    from rnnstream.workers.kafka_settings import KafkaSettings

    sides = [args.only] if args.only else list(SIDES)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="txncost-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "broker", port=free_port())
        broker.start()
        try:
            settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
            with TopicAdmin(settings) as admin:
                admin.create_topics([f"{PIPELINE}.events", f"{PIPELINE}.scores"], args.partitions)
            broker_proc = psutil.Process(broker.pid)
            for r in range(args.repeats):
                for s in sides[r % len(sides) :] + sides[: r % len(sides)]:  # each side first in turn
                    runs[s].append(run_side(s, broker.bootstrap_servers, args, r, broker_proc))
                    if not args.json:
                        print(f"  {s} #{r}: {runs[s][-1]}", flush=True)
        finally:
            broker.stop()

    def med(side: str, field: str) -> float:
        return round(statistics.median(x[field] for x in runs[side]), 3)

    result: dict = {"txns": args.txns, "repeats": args.repeats, "scores_per_txn": args.scores}
    for s in sides:
        for field in runs[s][0]:
            result[f"{s}_{field}"] = med(s, field)
    if len(sides) == len(SIDES):
        for kind in ("cpu", "wall"):
            for other in ("bare", "ours_stock"):
                ratio = result[f"ours_{kind}_ms_per_txn"] / result[f"{other}_{kind}_ms_per_txn"]
                result[f"{kind}_ours_vs_{other}"] = round(ratio, 3)
    print_result(result, args.json, width=44)


if __name__ == "__main__":
    main()
