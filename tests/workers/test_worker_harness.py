"""Shared pieces of the scoring-worker tests (imported by test_scoring/test_recovery/...; holds no tests).

A tiny pipeline schema, a seeded GRU model saved as a folder, a seeded event stream, topic setup, a Ray
fixture factory (one Ray per test module), and "run the verifier and print its verdict line".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import save_model
from rnnstream.workers.kafka_io import EventProducer, TopicAdmin
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.score_verifier import (
    Verdict,
    checkpoint_states,
    offline_reference,
    read_events,
    read_scores,
    verify,
)
from rnnstream.workers.scoring_worker import ModelHandle, WorkerConfig

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
    return model, ModelHandle(version=f"local:{directory.name}", locator=str(directory))


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


def produce(
    settings: KafkaSettings, schema: EventSchema, table: pa.Table, encoding: str = "json", per_msg: int = 200
) -> None:
    with EventProducer(settings, schema) as producer:
        if encoding == "json":
            producer.send_json(table)
        else:
            producer.send_arrow(table, events_per_message=per_msg)
        producer.flush()


def worker_config(
    settings: KafkaSettings, schema: EventSchema, checkpoint_dir: Path, **kw: Any
) -> WorkerConfig:
    defaults = dict(
        max_batch=1024,
        linger_ms=5,
        commit_interval_ms=100,
        checkpoint_every_events=2000,
        checkpoint_every_s=1.0,
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


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def scored_total(coordinator: Any) -> int:
    import ray

    st = ray.get(coordinator.status.remote(), timeout=30)
    return sum(int(w.get("scored", 0)) for w in st["workers"])


def committed_all(settings: KafkaSettings, config: WorkerConfig) -> bool:
    """True when the scoring group's committed offsets reached the end of every events partition."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.client_kwargs(), group_id=config.group_id, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(config.events_topic) or set()
        tps = [TopicPartition(config.events_topic, p) for p in parts]
        ends = c.end_offsets(tps)
        return all((c.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        c.close()


def run_verifier(
    settings: KafkaSettings,
    config: WorkerConfig,
    model: Any,
    handle: ModelHandle,
    partitions: int,
    *,
    mode: str = "exactly_once",
) -> Verdict:
    """Read events and committed scores from the broker, compare with the offline forward and the final
    checkpoints; print and return the verdict."""
    events = read_events(settings, config.events_topic, config.schema)
    scores = read_scores(settings, config.scores_topic)
    reference = offline_reference(events, model)
    states = checkpoint_states(
        config.checkpoint_uri, config.pipeline, list(range(partitions)), model, handle.version
    )
    verdict = verify(events, scores, reference, states, mode=mode)
    print(verdict.line)
    return verdict


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module (token auth as Ray 2.60 sets it up; no dashboard)."""
    import ray

    from rnnstream.workers.serving import init_ray

    started = not ray.is_initialized()  # another module's (e.g. session) Ray is reused, not shut down
    init_ray(num_cpus=4)
    yield ray
    if started:
        ray.shutdown()
