"""CPU per event and per cycle of ONE scoring worker at a paced low rate: the fixed cost of each small batch.

At 5,000 events/s a worker polls ~100 events a cycle and commits a transaction about every cycle, so what a
cycle costs whatever its size (Python objects per cycle, per-partition bookkeeping, torch dispatch for a tiny
batch, the transaction's round trips) dominates its CPU: ~90 CPU-us an event, against ~2.5 us in the
throughput runs. On a 2-core machine that CPU is what queues the broker and the commits (README, "Where the
p99 at 10,000 events/s comes from"). This benchmark measures it directly.

One :class:`ScoringWorker` (no Ray, no coordinator) runs in a child process against the embedded broker and
owns the 4 partitions of a fresh topic; this process sends the benchmarks' events (GRU 32->64, 31 floats an
event) paced at ``--rates`` (one send every 20 ms), as JSON (one event a message) and as Arrow (one message
a send). The child measures, after a warm-up of a quarter of the events: its process CPU (every thread: the
loop, the commit thread, kafka-python's I/O threads, the checkpoint writer) and its loop thread's CPU, per
event and per cycle that polled something. With ``--stages`` the child also times (``time.thread_time``,
whatever thread runs it) the stages of a cycle: ``poll`` (WorkerClients.poll_batch), ``decode``
(EventDecoder.decode), ``score`` (ScoringPartition.process less its decode), ``emit`` (ScoringWorker._emit),
``caught_up`` (the commit policy's question), ``commit`` (offsets offered + the transaction's commit, on the
loop or in the background); ``loop_other`` is the loop's remainder, ``outside_loop`` the other threads less
the commit. The wrappers cost ~1 us a call: compare variants without ``--stages``.

``--backlog B``: every event is sent before the worker starts, then it runs cycles of ``B`` events, each
committed (``commit_interval_ms`` 0): the same per-cycle work without the pace. On a shared machine the
paced figures move with the load (a loop that wakes cold between sends costs ~3x the CPU for the same
calls); compare code with ``--backlog 100``. Ray actors run with ``OMP_NUM_THREADS=1``: set it to measure
what they see.

``--compare DIR``: each run also with the package found in ``DIR`` (a folder holding ``rnnstream``, e.g. a
symlink to a ``git worktree`` of an older revision), alternating old and new, ``--repeats`` times each; the
figures are medians and ``new_over_old`` their ratios (the machine is shared and noisy: only ratios measured
side by side in one run mean anything).

    python benchmarks/cycle_cost.py --quick
    git worktree add /tmp/oldtree <rev> && mkdir -p /tmp/oldpkg && ln -s /tmp/oldtree /tmp/oldpkg/rnnstream
    python benchmarks/cycle_cost.py --compare /tmp/oldpkg --repeats 3
    OMP_NUM_THREADS=1 python benchmarks/cycle_cost.py --backlog 100 --stages --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTITIONS = 4
SEND_EVERY_S = 0.02
STAGES = ("poll", "decode", "score", "emit", "caught_up", "commit")


# ------------------------------------------------------------------------------------------------ the child
def _use_tree(tree: str | None) -> None:
    """Import ``rnnstream`` from ``tree`` instead of the editable install (an older revision to compare)."""
    if tree:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
        sys.path.insert(0, tree)


class _Stages:
    """Counters (with ``timed`` also CPU seconds) of the worker's stages: their classes' methods wrapped."""

    def __init__(self, timed: bool) -> None:
        self.timed = timed
        self.cpu = dict.fromkeys((*STAGES, "process"), 0.0)
        self.cycles = 0
        self.busy_cycles = 0

    def wrap(self, cls, name: str, stage: str | None, count: str | None = None) -> None:
        real = getattr(cls, name)
        cpu, timed, clock = self.cpu, self.timed, time.thread_time

        def wrapper(*a, **kw):
            t0 = clock() if timed and stage else 0.0
            out = real(*a, **kw)
            if timed and stage:
                cpu[stage] += clock() - t0
            if count == "cycle":
                self.cycles += 1
            elif count == "poll" and out:
                self.busy_cycles += 1
            return out

        setattr(cls, name, wrapper)

    def install(self) -> None:
        from rnnstream.workers.event_codec import EventDecoder
        from rnnstream.workers.scoring_partition import ScoringPartition
        from rnnstream.workers.scoring_worker import ScoringWorker
        from rnnstream.workers.worker_clients import WorkerClients

        self.wrap(ScoringWorker, "_cycle", None, "cycle")
        self.wrap(WorkerClients, "poll_batch", "poll", "poll")
        if self.timed:
            self.wrap(EventDecoder, "decode", "decode")
            self.wrap(ScoringPartition, "process", "process")
            self.wrap(ScoringWorker, "_emit", "emit")
            self.wrap(WorkerClients, "caught_up", "caught_up")
            self.wrap(WorkerClients, "offer_offsets", "commit")
            self.wrap(WorkerClients, "commit", "commit")

    def snapshot(self) -> dict[str, float]:
        return {**self.cpu, "cycles": self.cycles, "busy_cycles": self.busy_cycles}


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by name (Python's name, else the kernel's)."""
    import threading

    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id)
        if name is None:
            with open(f"/proc/self/task/{t.id}/comm") as f:
                name = f.read().strip()
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def child(args: argparse.Namespace) -> None:
    """One worker in this process: assign, say ``ready``, then measure the window described above."""
    _use_tree(args.tree)
    import rnnstream

    stages = _Stages(args.stages)
    stages.install()
    from rnnstream.rnn_core.event_schema import EventSchema
    from rnnstream.workers.kafka_settings import KafkaSettings
    from rnnstream.workers.scoring_worker import ScoringWorker
    from rnnstream.workers.worker_config import ModelHandle, WorkerConfig

    schema = EventSchema(pipeline=args.pipeline, version=1, vectors=(("x", args.features),))
    config = WorkerConfig(
        pipeline=args.pipeline,
        schema=schema,
        kafka=KafkaSettings(bootstrap_servers=args.bootstrap),
        checkpoint_uri=args.ckpt,
        overlap_commits=True,
        **({"max_batch_events": args.backlog, "commit_interval_ms": 0} if args.backlog else {}),
    )
    worker = ScoringWorker(0, config, export_metrics=False)
    try:
        worker.assign(list(range(PARTITIONS)), ModelHandle(version="bench:gru", locator=args.model))
        loop_clock = time.pthread_getcpuclockid(worker._thread.ident)
        print(json.dumps({"ready": str(Path(next(iter(rnnstream.__path__))).resolve())}), flush=True)
        counts = worker.metrics.counts

        def wait_scored(n: int) -> None:
            deadline = time.monotonic() + 300
            while counts["scored"] < n:
                if time.monotonic() > deadline or not worker._thread.is_alive():
                    raise RuntimeError(f"scored {counts['scored']} of {n}: {worker.status()}")
                time.sleep(0.02)

        wait_scored(args.warm)
        ev0, st0, th0 = counts["scored"], stages.snapshot(), _thread_cpu()
        cpu0, loop0 = time.process_time(), time.clock_gettime(loop_clock)
        wait_scored(args.events)
        cpu, loop = time.process_time() - cpu0, time.clock_gettime(loop_clock) - loop0
        ev, st1 = counts["scored"] - ev0, stages.snapshot()
        d = {k: st1[k] - st0[k] for k in st1}
        busy = max(1, d["busy_cycles"])
        out = {
            "events": ev,
            "busy_cycles": d["busy_cycles"],
            "idle_cycles": d["cycles"] - d["busy_cycles"],
            "events_per_cycle": ev / busy,
            "cpu_us_per_event": 1e6 * cpu / ev,
            "cpu_us_per_cycle": 1e6 * cpu / busy,
            "loop_cpu_us_per_cycle": 1e6 * loop / busy,
            "outside_loop_cpu_us_per_cycle": 1e6 * (cpu - loop) / busy,
        }
        if args.stages:
            d["score"] = d.pop("process") - d["decode"]
            loop_staged = sum(d[s] for s in STAGES if s != "commit")  # commit: loop or commit thread
            for s in STAGES:
                out[f"{s}_us_per_cycle"] = 1e6 * d[s] / busy
            commit = out["commit_us_per_cycle"]
            out["loop_other_us_per_cycle"] = max(0.0, 1e6 * (loop - loop_staged) / busy - commit)
            out["outside_loop_other_us_per_cycle"] = max(0.0, 1e6 * (cpu - loop) / busy - commit)
            th1 = _thread_cpu()
            for t, v in th1.items():
                if (v - th0.get(t, 0.0)) / busy > 100e-6:
                    out[f"thread_{t}_us_per_cycle"] = 1e6 * (v - th0.get(t, 0.0)) / busy
        print(json.dumps(out), flush=True)
    finally:
        worker.shutdown()


# ----------------------------------------------------------------------------------------------- the parent
def send_paced(settings, schema, table, encoding: str, rate: float) -> None:
    """``table`` at ``rate`` events/s, a send every 20 ms (one Arrow message, or a JSON message an event)."""
    from rnnstream.workers.event_producer import EventProducer

    chunk = max(1, int(rate * SEND_EVERY_S))
    with EventProducer(settings, schema, events_per_message=chunk) as producer:
        t0 = time.monotonic()
        for i in range(0, table.num_rows, chunk):
            part = table.slice(i, chunk)
            producer.send_json(part) if encoding == "json" else producer.send_arrow(part)
            producer.flush()
            ahead = (i + chunk) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def send_all(settings, schema, table, encoding: str, per_msg: int) -> None:
    from rnnstream.workers.event_producer import EventProducer

    with EventProducer(settings, schema, events_per_message=per_msg) as producer:
        producer.send_json(table) if encoding == "json" else producer.send_arrow(table)
        producer.flush()


def one_run(
    args, settings, handle, tmp: Path, encoding: str, rate: float, tree: str | None, run: int
) -> dict:
    """Fresh topics, a child worker, ``rate`` events/s sent as ``encoding``; the child's figures."""
    from e2e_fixtures import FEATURES, create_topics, make_events, make_schema

    name = f"cyc-{encoding}-{int(rate)}-{run}-{'old' if tree else 'new'}"
    schema = make_schema(name)
    create_topics(settings, name)
    n = int(rate * args.seconds)
    table = make_events(schema, n, args.keys, seed=run, start_ms=1_700_000_000_000)
    cmd = [sys.executable, __file__, "--child", "--pipeline", name, "--bootstrap", settings.bootstrap_servers]
    cmd += ["--model", handle.locator, "--ckpt", str(tmp / f"ckpt-{name}"), "--features", str(FEATURES)]
    cmd += ["--events", str(n), "--warm", str(n // 4)] + (["--tree", tree] if tree else [])
    cmd += ["--stages"] if args.stages else []
    per_msg = max(1, int(rate * SEND_EVERY_S))  # events an Arrow message
    if args.backlog:  # every event waits on the broker before the worker starts: cycles of --backlog events
        send_all(settings, schema, table, encoding, per_msg)
        cmd += ["--backlog", str(args.backlog if encoding == "json" else max(1, args.backlog // per_msg))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        if "ready" not in ready:
            raise RuntimeError(f"{name}: the child did not start (exit {proc.wait(60)})")
        if not args.backlog:
            send_paced(settings, schema, table, encoding, rate)
        out = json.loads(proc.stdout.readline() or "{}")
        if "events" not in out:
            raise RuntimeError(f"{name}: no figures (exit {proc.wait(60)})")
        return {**out, "package": ready["ready"]}
    finally:
        if proc.wait(120) != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for a in ("--pipeline", "--bootstrap", "--model", "--ckpt", "--tree"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    ap.add_argument("--features", type=int, default=31, help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument(
        "--backlog",
        type=int,
        default=0,
        metavar="B",
        help="instead of pacing: every event sent first, then cycles of B events, each committed "
        "(commit_interval_ms 0): the same fixed cost, without the shared machine's pace in it",
    )
    ap.add_argument("--quick", action="store_true", help="3 s a run")
    ap.add_argument("--json", action="store_true", help="one JSON object")
    ap.add_argument("--seconds", type=float, default=8.0, help="events sent a run = rate x seconds")
    ap.add_argument("--rates", default="2000,5000", help="events/s, comma separated")
    ap.add_argument("--encodings", default="json,arrow")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--stages", action="store_true", help="time each stage (adds ~1 us a wrapped call)")
    ap.add_argument("--compare", metavar="DIR", help="also run the package in DIR/rnnstream, alternating")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.seconds = 3.0
    sys.path.insert(0, str(HERE))
    from e2e_fixtures import print_result, seeded_model

    from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
    from rnnstream.workers.kafka_settings import KafkaSettings

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    trees = [None, str(Path(args.compare).resolve())] if args.compare else [None]
    result: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory(prefix="cycle-cost-") as tmpdir:
        tmp = Path(tmpdir)
        broker = EmbeddedBroker(data_dir=tmp / "broker", port=free_port())
        broker.start()
        try:
            settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
            _, handle = seeded_model(tmp)
            for encoding in args.encodings.split(","):
                for rate in [float(r) for r in args.rates.split(",")]:
                    runs: dict[str, list[dict]] = {"new": [], "old": []}
                    for rep in range(args.repeats):
                        for tree in trees if rep % 2 == 0 else trees[::-1]:
                            side = "old" if tree else "new"
                            out = one_run(args, settings, handle, tmp, encoding, rate, tree, rep)
                            log(f"{encoding} {rate:.0f}/s {side}: {json.dumps(out)}")
                            runs[side].append(out)
                    tag = f"{encoding}_{int(rate)}"
                    for side, outs in runs.items():
                        if not outs:
                            continue
                        prefix = tag if side == "new" else f"{tag}_old"
                        for k in outs[0]:
                            if k != "package":
                                result[f"{prefix}_{k}"] = round(statistics.median(o[k] for o in outs), 1)
                    if runs["old"]:
                        for k in ("cpu_us_per_event", "cpu_us_per_cycle", "loop_cpu_us_per_cycle"):
                            result[f"{tag}_{k}_new_over_old"] = round(
                                result[f"{tag}_{k}"] / result[f"{tag}_old_{k}"], 3
                            )
        finally:
            broker.stop()
    print_result(result, args.json, width=44)


if __name__ == "__main__":
    main()
