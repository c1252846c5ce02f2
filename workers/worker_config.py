"""What a scoring worker is told, as plain frozen data: the model to serve and the worker's settings.

Kept apart from the worker loop so that the CLI, the coordinator and the tests can build and check a
configuration without importing the loop (and so that nothing imports in a circle).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.workers.kafka_settings import KafkaSettings


@dataclass(frozen=True)
class ModelHandle:
    """Which model to serve: a version name (carried by every score and checkpoint) and where to load it.

    ``locator`` is a model directory (``save_model`` layout) or a registry URI (``models:/name/3``); the
    worker loads it itself with :func:`rnnstream.workers.model_loading.load_model`.
    """

    version: str
    locator: str


DEFAULT_DEPLOYMENT = "rnnstream"
_DEPLOYMENT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,51}[a-z0-9])?$")


def release_topic(pipeline: str, deployment: str, kind: str) -> str:
    """The topic of ``kind`` (``scores``, ``dlq``, ``scores.shadow``) that release ``deployment`` writes for
    ``pipeline``: ``<pipeline>.<kind>`` for the default release, ``<pipeline>.<deployment>.<kind>`` for any
    other. Every release reads the same ``<pipeline>.events``; what each writes stays its own (pipeline and
    deployment names hold no dots, so the two forms never meet)."""
    if deployment == DEFAULT_DEPLOYMENT:
        return f"{pipeline}.{kind}"
    return f"{pipeline}.{deployment}.{kind}"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a scoring worker needs as data (frozen, picklable): pipeline, Kafka, checkpoints, knobs."""

    pipeline: str
    schema: EventSchema
    kafka: KafkaSettings
    checkpoint_uri: str
    deployment: str = DEFAULT_DEPLOYMENT  # release name: two releases on one Kafka never share ids
    events_topic: str = ""
    scores_topic: str = ""
    dlq_topic: str = ""
    shadow_topic: str = ""
    group_id: str = ""
    transactions: bool = True
    max_batch_events: int = 4096  # messages polled into one micro-batch; events a scorer call steps
    batch_linger_ms: int = 5
    # commit timing (see commit_policy): as soon as a batch is scored when keeping up (after at least
    # min_commit_interval_ms), at least every commit_interval_ms when behind
    commit_interval_ms: int = 100
    min_commit_interval_ms: int = 0
    # commit N in the background while batch N+1 is polled and scored (commit_in_flight); off: on a loaded
    # 2-core machine it measured worse (GIL hand-offs slow the commit more than the overlap saves)
    overlap_commits: bool = False
    max_in_flight: int = 50_000
    checkpoint_interval_events: int = 20_000
    checkpoint_interval_seconds: float = 10.0
    key_ttl_seconds: float | None = None  # event time a key may be idle before its state is dropped
    score_encoding: str = "auto"  # auto (like the input), json or arrow
    max_poll_records: int = 4096
    fetch_max_bytes: int = 8 * 1024 * 1024
    max_partition_fetch_bytes: int = 2 * 1024 * 1024
    lag_every_s: float = 1.0  # how often lag is read from the broker (apart from the worker's clients)
    # a partition behind whose position has not moved for this long is reported stalled (status, log)
    stall_after_s: float = 30.0
    metrics_port: int | None = 0  # per-partition Prometheus series on this port + slot (0: any free port)
    error_backoff_s: float = 0.5
    commit_timeout_ms: int = 15_000
    # the largest score or dead-letter record written; keep it under the output topics' max.message.bytes
    # (Kafka's default 1,048,588): bigger score chunks are split, a bigger single score is dead-lettered
    max_record_bytes: int = 1_000_000
    torch_threads: int = 1
    warmup_archive_uri: str | None = None  # Parquet archive a hot-swap challenger warms each key from
    warmup_archive_events: int = 256  # at most this many of a key's latest archived events

    def __post_init__(self) -> None:
        p, d = self.pipeline, self.deployment
        defaults = {
            "events_topic": f"{p}.events",
            "scores_topic": release_topic(p, d, "scores"),
            "dlq_topic": release_topic(p, d, "dlq"),
            "shadow_topic": release_topic(p, d, "scores.shadow"),
            "group_id": f"{d}-{p}-scoring",
        }
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        if not _DEPLOYMENT_NAME.match(self.deployment):
            raise ValueError(
                f"deployment name {self.deployment!r} must be lowercase letters, digits and '-' (at most 53)"
            )
        if self.score_encoding not in ("auto", "json", "arrow"):
            raise ValueError("score_encoding must be auto, json or arrow")

    @property
    def key_ttl_ms(self) -> int | None:
        """:attr:`key_ttl_seconds` in event-time milliseconds (None: keys never expire)."""
        return None if self.key_ttl_seconds is None else round(self.key_ttl_seconds * 1000)


def transactional_id(config: WorkerConfig, slot: int) -> str:
    """The stable transactional id of a worker slot of this deployment: a restarted actor fences the
    process it replaces, and another release's workers (another deployment name) are never fenced."""
    return f"{config.deployment}-{config.pipeline}-worker-{slot}"


def committed_all(kafka: KafkaSettings, config: WorkerConfig) -> bool:
    """True when the scoring group's committed offsets reached the end of every events partition (False
    while the broker names no partition of the topic: nothing known is not everything committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=config.group_id, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(config.events_topic) or set()
        tps = [TopicPartition(config.events_topic, p) for p in parts]
        ends = consumer.end_offsets(tps)
        return bool(tps) and all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        consumer.close()
