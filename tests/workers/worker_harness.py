"""Shared pieces of the scoring-worker tests (imported by test_scoring/test_recovery/...; holds no tests).

A tiny pipeline schema, a seeded GRU model saved as a folder, a seeded event stream, topic setup (all four
together: :func:`scoring_stream`), and "run the verifier and print its verdict line". The fixtures built on
these (``ray_local``, ``new_stream``) are in ``tests/workers/conftest.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import local_model_version, save_model
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.kafka_io import TopicAdmin
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.score_verifier import (
    Verdict,
    checkpoint_states,
    offline_reference,
    read_events,
    read_scores,
    verify,
)
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig

MERCHANTS = ("grocery", "fuel", "travel", "online")


def make_schema(pipeline: str) -> EventSchema:
    return EventSchema(
        pipeline=pipeline, version=1, numeric=("amount", "velocity"), categorical=(("merchant", MERCHANTS),)
    )


def make_model(
    schema: EventSchema, directory: Path, seed: int = 0, hidden: int = 16
) -> tuple[Any, ModelHandle]:
    """A seeded GRU binary model saved as a folder; returns (model, handle)."""
    torch.manual_seed(seed)
    model = StreamingModel(ModelConfig(features=schema.feature_spec(), cell="gru", hidden_size=hidden))
    model.eval()
    save_model(model, directory)
    return model, ModelHandle(version=local_model_version(directory), locator=str(directory))


def make_events(
    schema: EventSchema, n: int, n_keys: int, seed: int = 0, start_ms: int | None = None
) -> pa.Table:
    """``n`` events over ``n_keys`` keys in event-time order (seeded)."""
    rng = np.random.default_rng(seed)
    start = int(time.time() * 1000) - 3_600_000 if start_ms is None else start_ms
    times = start + np.cumsum(rng.integers(1, 20, n))
    keys = [f"k{int(i):05d}" for i in rng.integers(0, n_keys, n)]
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "time": pa.array(times, pa.int64()).cast(pa.timestamp("ms")),
            "amount": pa.array(rng.gamma(2.0, 30.0, n)),
            "velocity": pa.array(rng.normal(0.0, 1.0, n)),
            "merchant": pa.array([MERCHANTS[i] for i in rng.integers(0, len(MERCHANTS) + 1, n) % 4]),
        },
        schema=schema.arrow_schema(),
    )


def new_pipeline(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(settings: KafkaSettings, pipeline: str, partitions: int) -> None:
    with TopicAdmin(settings) as admin:
        admin.create_topics(
            [f"{pipeline}.events", f"{pipeline}.scores", f"{pipeline}.dlq", f"{pipeline}.scores.shadow"],
            partitions,
        )


class ScoringStream(NamedTuple):
    """A fresh test pipeline on a broker: its settings, name, schema and topics, and a saved model."""

    settings: KafkaSettings
    pipeline: str
    schema: EventSchema
    model: Any
    handle: ModelHandle


def scoring_stream(
    settings: KafkaSettings, prefix: str, partitions: int, model_dir: Path, **model_kw: Any
) -> ScoringStream:
    """A new pipeline named ``<prefix>-<random>``, its schema, a seeded model saved in ``model_dir``
    (``model_kw``: :func:`make_model`'s ``seed``/``hidden``) and its topics with ``partitions`` partitions."""
    pipeline = new_pipeline(prefix)
    schema = make_schema(pipeline)
    model, handle = make_model(schema, model_dir, **model_kw)
    create_topics(settings, pipeline, partitions)
    return ScoringStream(settings, pipeline, schema, model, handle)


def produce(
    settings: KafkaSettings, schema: EventSchema, table: pa.Table, encoding: str = "json", per_msg: int = 200
) -> None:
    with EventProducer(settings, schema) as producer:
        if encoding == "json":
            producer.send_json(table)
        else:
            producer.send_arrow(table, events_per_message=per_msg)
        producer.flush()


def produce_paced(
    settings: KafkaSettings, schema: EventSchema, table: pa.Table, per_slice: int, pause_s: float = 0.1
) -> None:
    """``table`` as JSON in slices of ``per_slice`` events, ``pause_s`` apart: a stream that keeps coming."""
    for i in range(0, table.num_rows, per_slice):
        produce(settings, schema, table.slice(i, per_slice), encoding="json")
        time.sleep(pause_s)


def produce_until(
    settings: KafkaSettings,
    schema: EventSchema,
    table: pa.Table,
    per_slice: int,
    done: threading.Event,
    after: int,
    scored: Callable[[], int],
    ahead: int = 2000,
    pause_s: float = 0.1,
    stuck_s: float = 120.0,
) -> None:
    """Slices of ``per_slice`` events, ``pause_s`` apart and never more than ``ahead`` events ahead of
    ``scored()``, until ``done`` is set, then ``after`` events more (or until ``table`` ends; or when scoring
    makes no progress for ``stuck_s``): a live stream for as long as the test needs it, e.g. while a
    challenger warms up on it. Not a fixed-length stream, nor one paced by the clock alone: a worker slowed
    down (a loaded machine, kernels compiled on first use) would turn that into a backlog drained in a burst
    before the challenger is even prepared, leaving a warm-up with no traffic (it then waits forever) or with
    partitions it never saw."""
    sent = since_done = 0
    for i in range(0, table.num_rows, per_slice):
        if done.is_set():
            if since_done >= after:
                return
            since_done += min(per_slice, table.num_rows - i)
        deadline = time.monotonic() + stuck_s
        while sent - scored() > ahead:
            if time.monotonic() > deadline:
                return  # the test's own wait fails and says why
            time.sleep(0.1)
        produce(settings, schema, table.slice(i, per_slice), encoding="json")
        sent += min(per_slice, table.num_rows - i)
        time.sleep(pause_s)


def worker_config(
    settings: KafkaSettings, schema: EventSchema, checkpoint_dir: Path, **kw: Any
) -> WorkerConfig:
    defaults = dict(
        max_batch_events=1024,
        batch_linger_ms=5,
        commit_interval_ms=100,
        checkpoint_interval_events=2000,
        checkpoint_interval_seconds=1.0,
        lag_every_s=0.5,
    )
    defaults.update(kw)
    return WorkerConfig(
        pipeline=schema.pipeline,
        schema=schema,
        kafka=settings,
        checkpoint_uri=str(checkpoint_dir),
        **defaults,
    )


def start_following_pointer(
    config: WorkerConfig, handle: ModelHandle, pointer: Path, partitions: int, **kw: Any
) -> Any:
    """Two workers whose coordinator follows a champion pointer file (``pointer`` names a model folder;
    rewrite it to promote), polled every 0.3 s; ``kw`` go to ``start_coordinator``."""
    from rnnstream.workers.serving import PointerFileProbe, start_coordinator

    return start_coordinator(
        config, handle, 2, partitions, model_probe=PointerFileProbe(str(pointer)), probe_every_s=0.3, **kw
    )


def wait_for(
    cond: Callable[[], bool],
    timeout_s: float,
    what: str,
    every_s: float = 0.2,
    explain: Callable[[], object] | None = None,
) -> None:
    """Poll ``cond`` until it holds; past ``timeout_s`` fail naming ``what`` and, with ``explain``, what it
    returns then (e.g. :func:`coordinator_state`: why it did not happen, for a failure CI saw once)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            why = ""
            if explain is not None:
                try:
                    why = f"; {explain()}"
                except Exception as exc:  # the explanation must not hide the timeout
                    why = f"; (no explanation: {type(exc).__name__}: {exc})"
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{why}")
        time.sleep(every_s)


WORKER_STATE = (
    "slot", "assigned", "partitions", "alive", "scored", "lag_total", "challenger_version",
    "challenger_events", "resets", "kafka_errors", "fenced", "last_error", "error",
)  # fmt: skip


def coordinator_state(coordinator: Any) -> str:
    """The coordinator's status line, its last swap and what each worker says (for ``wait_for``'s
    ``explain``)."""
    import ray

    from rnnstream.workers.serving import status_line

    st = ray.get(coordinator.status.remote(), timeout=30)
    workers = [{k: w.get(k) for k in WORKER_STATE if k in w} for w in st["workers"]]
    return f"{status_line(st)}; last swap {(st['swaps'] or [None])[-1]}; workers {workers}"


def answered_status(coordinator: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    """The coordinator's status once every worker answered in it: a worker that takes over 5 s to answer
    (a loaded machine) shows there only as ``{"slot", "error", ...}``, without its numbers, so ask again."""
    import ray

    seen: dict[str, Any] = {}

    def answered() -> bool:
        seen["status"] = ray.get(coordinator.status.remote(), timeout=30)
        return not any("error" in w for w in seen["status"]["workers"])

    wait_for(answered, timeout_s, "every worker to answer the status call")
    return seen["status"]


def scored_total(coordinator: Any) -> int:
    import ray

    st = ray.get(coordinator.status.remote(), timeout=30)
    return sum(int(w.get("scored", 0)) for w in st["workers"])


def run_verifier(
    settings: KafkaSettings,
    config: WorkerConfig,
    model: Any,
    handle: ModelHandle,
    partitions: int,
    *,
    mode: str = "exactly_once",
    exclude: set[tuple[int, int, int]] | None = None,
) -> Verdict:
    """Read events and committed scores from the broker, compare with the offline reference (with the
    config's key TTL; less the ``exclude`` positions, e.g. events dead-lettered for breaking the model) and
    the final checkpoints; print and return the verdict."""
    events = read_events(settings, config.events_topic, config.schema)
    if exclude:
        events = events.without(exclude)
    scores = read_scores(settings, config.scores_topic)
    reference = offline_reference(events, model, key_ttl_ms=config.key_ttl_ms)
    states = checkpoint_states(
        config.checkpoint_uri,
        config.pipeline,
        list(range(partitions)),
        model,
        handle.version,
        deployment=config.deployment,
    )
    verdict = verify(events, scores, reference, states, mode=mode)
    print(verdict.line)
    return verdict
