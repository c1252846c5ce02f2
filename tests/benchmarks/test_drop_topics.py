"""``e2e_fixtures.drop_topics``: a finished run's topics go (the embedded broker rewrites all it holds after
every change, so the benchmarks drop what they measured), and no other topic does."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_fixtures as e2e

from rnnstream.workers.kafka_io import TopicAdmin


def test_drop_topics_removes_the_prefixed_topics_only(kafka_settings) -> None:
    run = f"dropme-{uuid.uuid4().hex[:8]}"
    mine = [f"{run}.r1.events", f"{run}.r1.scores", f"changelog__{run}--t--s"]
    kept = [f"{run}.r10.events", f"{run}.events"]  # a longer round number, the source topic
    with TopicAdmin(kafka_settings) as admin:
        admin.create_topics(mine + kept, 1)
    assert e2e.drop_topics(kafka_settings, f"{run}.r1.", f"changelog__{run}--") == 3
    with TopicAdmin(kafka_settings) as admin:
        left = {t for t in admin.list_topics() if run in t}
    assert left == set(kept)
