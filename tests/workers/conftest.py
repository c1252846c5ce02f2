"""Fixtures of the scoring-worker tests: one local Ray per test module, and a fresh pipeline with its topics
and a saved model (see :func:`tests.workers.worker_harness.scoring_stream`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rnnstream.workers.kafka_settings import KafkaSettings
from tests.workers.worker_harness import ScoringStream, scoring_stream


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """One local Ray per test module (token auth as Ray 2.60 sets it up; no dashboard)."""
    import ray

    from rnnstream.workers.serving import init_ray

    started = not ray.is_initialized()  # another module's (e.g. session) Ray is reused, not shut down
    init_ray(num_cpus=4)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def new_stream(kafka_settings: KafkaSettings, tmp_path: Path) -> Callable[..., ScoringStream]:
    """``new_stream(prefix, partitions, **model_kw)``: :func:`scoring_stream` on the session's broker, the
    model saved in ``tmp_path / "model"``."""

    def make(prefix: str, partitions: int, **model_kw: Any) -> ScoringStream:
        return scoring_stream(kafka_settings, prefix, partitions, tmp_path / "model", **model_kw)

    return make
