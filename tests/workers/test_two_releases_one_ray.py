"""Two releases (deployment names) of one pipeline on one Ray cluster and one Kafka (issue 13, item 6).

The chart gives each release its own RayCluster; a shared cluster (``serve --ray-address`` of two releases)
must work too: each release's coordinator is its own named actor (it was one name per pipeline, so the
second release could not start), found by its release; each scores every event exactly once into its own
scores topic with its own group, transactional ids and checkpoints.
"""

from __future__ import annotations

import pytest

from rnnstream.workers.kafka_io import TopicAdmin
from rnnstream.workers.serving import find_coordinator, start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import make_events, produce, run_verifier, wait_for, worker_config

PARTITIONS = 2
RELEASES = ("blue", "green")


def test_two_releases_of_one_pipeline_serve_on_one_ray(kafka_settings, ray_local, new_stream, tmp_path):
    settings, pipeline, schema, model, handle = new_stream("tworel", PARTITIONS)
    produce(settings, schema, make_events(schema, 2000, 50, seed=7))
    configs = [worker_config(settings, schema, tmp_path / "ckpt", deployment=r) for r in RELEASES]
    assert len({c.scores_topic for c in configs}) == 2
    with TopicAdmin(settings) as admin:  # what `serve` creates for its release
        for c in configs:
            admin.create_topics([c.scores_topic, c.dlq_topic, c.shadow_topic], PARTITIONS)
    coords = []
    try:
        for config in configs:
            coords.append(start_coordinator(config, handle, 1, PARTITIONS))
        for config in configs:
            wait_for(lambda c=config: committed_all(settings, c), 120, f"{config.deployment} committed all")
        found = [find_coordinator(pipeline, r) for r in RELEASES]
        assert [ray_local.get(c.status.remote())["pipeline"] for c in found] == [pipeline, pipeline]
        assert found[0]._actor_id != found[1]._actor_id
        with pytest.raises(ValueError, match="release 'rnnstream'"):
            find_coordinator(pipeline)  # the default release does not run here
    finally:
        for coord in coords:
            stop_coordinator(coord)
    for config in configs:
        verdict = run_verifier(settings, config, model, handle, PARTITIONS)
        assert verdict.ok and verdict.scored == verdict.expected == 2000, verdict.line
        assert verdict.state_keys_checked > 0, f"{config.deployment}: no checkpoints of its own"
