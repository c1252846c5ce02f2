"""A worker that cannot reach Kafka answers a stop at once, without a final commit and checkpoint (so no
caller hangs): that answer is no release. Removing a slot fences its transactional id first; when the fence
fails too, the slot is left in place (a later start stops it) rather than forgotten with its partitions."""

from __future__ import annotations

import pytest

from rnnstream.workers.control_plan import must_fence_before_handover
from rnnstream.workers.embedded_broker import free_port
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.worker_slots import WorkerSlots
from tests.workers.worker_harness import make_schema, new_pipeline, wait_for, worker_config


def test_a_retired_slot_is_fenced_even_when_its_stop_answered():
    assert must_fence_before_handover(released_cleanly=True, stopped=True)
    assert must_fence_before_handover(released_cleanly=False)
    assert not must_fence_before_handover(released_cleanly=True)


def test_a_slot_stopped_without_kafka_is_not_removed_unfenced(ray_local, tmp_path):
    """The broker is unreachable (a closed port): the worker's stop is answered without a release and the
    fence fails, so the slot stays (before, it was killed and forgotten, its last transaction unsettled, and
    the next start handed its partitions out)."""
    settings = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{free_port()}", bootstrap_timeout_ms=1000, request_timeout_ms=1000
    )
    config = worker_config(settings, make_schema(new_pipeline("unreachable")), tmp_path / "ckpt")
    slots = WorkerSlots(config, {"num_cpus": 0}, None, stop_timeout_s=60.0)
    slots.start(0)
    try:
        wait_for(
            lambda: (slots.status(0, timeout=10.0) or {}).get("failing_for_s") is not None, 60, "it fails"
        )
        with pytest.raises(RuntimeError, match="could not be fenced"):
            slots.stop(0)
        assert 0 in slots and slots.status(0, timeout=10.0) is not None  # left in place, still answering
    finally:
        if 0 in slots:
            slots.remove(0)
