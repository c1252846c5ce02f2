"""The end-to-end benchmarks' shared set-up: the event schema and generator, the embedded broker and Ray,
the seeded model, topics, producing, the benchmarks' worker settings, starting workers and waiting until a
group committed every offset (the runs themselves are timed by :mod:`release_window`).

Used by :mod:`e2e_throughput`, :mod:`worker_scaling`, :mod:`peer_quixstreams` and :mod:`chaos`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

PARTITIONS = 4
FEATURES = 31
HIDDEN = 64
LOAD_SLICE_EVENTS = 200_000  # ~25 MB of Arrow events: a broker backlog kafka-python reads in one fetch


def make_schema(name: str):
    from rnnstream.rnn_core.event_schema import EventSchema

    return EventSchema(pipeline=name, version=1, vectors=(("x", FEATURES),))


@contextlib.contextmanager
def broker_and_ray(prefix: str) -> Iterator[tuple[Path, Any]]:
    """A temporary folder, an embedded broker in it and a local Ray (4 logical CPUs), all gone after:
    ``(tmp, settings)``."""
    import ray

    from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
    from rnnstream.workers.kafka_settings import KafkaSettings
    from rnnstream.workers.serving import init_ray

    with tempfile.TemporaryDirectory(prefix=prefix) as tmpdir:
        tmp = Path(tmpdir)
        broker = EmbeddedBroker(data_dir=tmp / "broker", port=free_port())
        broker.start()
        try:
            # Ray starts its workers at nice 15 (RAY_worker_niceness) to keep its own daemons responsive; the
            # floors (pass-through, round trip, score reader) run at nice 0: on a shared machine that starves
            # the scoring workers first (p50 at 10k events/s 112 -> 60 ms at nice 0, side by side, load 18)
            os.environ.setdefault("RAY_worker_niceness", "0")
            init_ray(num_cpus=4)
            yield tmp, KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            broker.stop()


def print_result(result: dict, as_json: bool, width: int = 24) -> None:
    """One JSON object, or one ``name: value`` line a figure."""
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>{width}}: {v}")


def seeded_model(tmp: Path):
    """The benchmarks' GRU(32->64) binary model, seeded, saved under ``tmp/model``: (model, handle)."""
    import torch

    from rnnstream.rnn_core.config import ModelConfig
    from rnnstream.rnn_core.model import StreamingModel
    from rnnstream.rnn_core.serialization import save_model
    from rnnstream.workers.worker_config import ModelHandle

    torch.manual_seed(0)
    base = make_schema("bench")
    model = StreamingModel(ModelConfig(features=base.feature_spec(), cell="gru", hidden_size=HIDDEN)).eval()
    save_model(model, tmp / "model")
    return model, ModelHandle(version="bench:gru-32-64", locator=str(tmp / "model"))


def make_events(schema, n: int, n_keys: int, seed: int, start_ms: int, key_prefix: str = "k") -> pa.Table:
    rng = np.random.default_rng(seed)
    times = start_ms + np.arange(n, dtype=np.int64)
    keys = pa.array([f"{key_prefix}{i}" for i in rng.integers(0, n_keys, n)], pa.string())
    values = np.round(rng.normal(size=(n, FEATURES)), 3).astype(np.float32)
    x = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), FEATURES)
    return pa.table(
        {"key": keys, "time": pa.array(times, pa.int64()).cast(pa.timestamp("ms")), "x": x},
        schema=schema.arrow_schema(),
    )


def create_topics(settings, pipeline: str) -> None:
    from rnnstream.workers.kafka_io import TopicAdmin

    with TopicAdmin(settings) as admin:
        admin.create_topics(
            [
                f"{pipeline}.events",
                f"{pipeline}.scores",
                f"{pipeline}.dlq",
                f"{pipeline}.scores.shadow",
                f"{pipeline}.raw",
            ],
            PARTITIONS,
        )


def drop_topics(settings, *prefixes: str) -> int:
    """Delete every topic whose name starts with one of ``prefixes`` (a finished run's); returns how many.

    The embedded broker keeps every topic's messages in memory and rewrites its whole state to disk (one
    JSON file) after each change, while it keeps serving: a state of a few hundred MB stretches its round
    trip p99 ~8x on this machine (2.9 -> 24 ms; measured in stop 30, HISTORY.md), and a whole quick run left
    ~2 GB, rewritten over and over while later runs were timed. Each run's topics are dropped once it is
    measured and checked, so every run meets the broker of about the same size."""
    from rnnstream.workers.kafka_io import TopicAdmin

    with TopicAdmin(settings) as admin:
        names = [t for t in admin.list_topics() if t.startswith(prefixes)]
        admin.delete_topics(names)
    return len(names)


def produce(settings, schema, table: pa.Table, encoding: str, per_msg: int = 1000) -> None:
    from rnnstream.workers.event_producer import EventProducer

    with EventProducer(settings, schema, events_per_message=per_msg) as p:
        for i in range(0, table.num_rows, 20_000):
            chunk = table.slice(i, 20_000)
            p.send_json(chunk) if encoding == "json" else p.send_arrow(chunk)
        p.flush()


def wait_committed(
    settings,
    group: str,
    topic: str,
    timeout_s: float = 600.0,
    ends: dict[int, int] | None = None,
    *,
    poll_s: float = 0.005,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Wait until ``group`` committed at least ``ends[p]`` on every partition of ``topic`` (default: each
    partition's end now); returns when a check first saw it (monotonic): at most ``poll_s`` plus one round
    trip after the commit. For the commit moment itself, ask the committer (the peer benchmark does).

    Each check is one OffsetFetch for all the partitions (an admin client made once: a client per check,
    or a request per partition, would cost more CPU than the workers being measured can spare on a small
    machine). ``alive``: checked too; a False raises at once (the committer failed)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    if ends is None:
        c = KafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False)
        try:
            ends = {tp.partition: end for tp, end in c.end_offsets(tps).items()}
        finally:
            c.close()
    want = [TopicPartition(topic, p) for p in ends]
    admin = KafkaAdminClient(**settings.client_kwargs())
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            got = admin.list_group_offsets({group: want}).get(group, {})
            if all(max(getattr(got.get(tp), "offset", 0), 0) >= ends[tp.partition] for tp in want):
                return time.monotonic()
            if alive is not None and not alive():
                raise RuntimeError(f"the consumer of {group} failed before committing {ends} on {topic}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} did not commit {ends} on {topic}")
            time.sleep(poll_s)
    finally:
        admin.close()


# ------------------------------------------------------------------------------------------------ rnnstream
WORKER_SETTINGS: dict[str, Any] = {  # the benchmarks' worker settings (throughput runs)
    "max_batch_events": 8192,
    "max_poll_records": 8192,
    "batch_linger_ms": 5,
    "commit_interval_ms": 250,
    "max_in_flight": 100_000,
    "checkpoint_interval_events": 200_000,
    "checkpoint_interval_seconds": 5.0,
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    "fetch_max_bytes": 32 * 1024 * 1024,
}


def run_workers(settings, schema, handle, ckpt: Path, workers: int = 2, **kw):
    from rnnstream.workers.serving import start_coordinator
    from rnnstream.workers.worker_config import WorkerConfig

    settings_kw = {**WORKER_SETTINGS, **kw}
    config = WorkerConfig(
        pipeline=schema.pipeline, schema=schema, kafka=settings, checkpoint_uri=str(ckpt), **settings_kw
    )
    coord = start_coordinator(config, handle, workers, PARTITIONS, health_every_s=0.1)
    return config, coord


def cpu_seconds(procs) -> float:
    """CPU seconds (user + system) of ``procs`` (psutil processes), summed."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)
