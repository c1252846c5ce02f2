"""Hot swap driven by the MLflow registry (issue 5, "Hot swap in running workers"): ``rnnstream models
promote`` while the stream runs.

Two versions of ``rnnstream-<pipeline>`` in a temp sqlite MLflow store, v1 ``@champion``; the coordinator
follows the alias with an :class:`AliasProbe` and workers load each version from the registry (weights only).
Promoting v2 mid-stream swaps: checked from the broker, every offset is scored exactly once, per partition the
version changes at exactly one offset (v1's version string to v2's), and the swap is recorded on v2 in MLflow
(tag ``rnnstream.swapped_in``). The coordinator and workers are Ray processes: they find the store through
``MLFLOW_TRACKING_URI``, set before this module's Ray starts.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from rnnstream.data_dir import DataDir
from rnnstream.workers import model_registry, tracking
from rnnstream.workers.score_verifier import offline_reference, read_events, read_scores, verify
from rnnstream.workers.serving import AliasProbe, start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    coordinator_state,
    make_events,
    make_model,
    produce_until,
    scored_total,
    scoring_stream,
    wait_for,
    worker_config,
)

PARTITIONS = 4


@pytest.fixture(scope="module")
def registry_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[tracking.TrackingStore, Any]]:
    """A temp sqlite MLflow store, and a local Ray whose processes find it via ``MLFLOW_TRACKING_URI``."""
    import ray

    from rnnstream.workers.serving import init_ray

    if ray.is_initialized():
        pytest.fail("this module starts its own Ray (its processes need MLFLOW_TRACKING_URI)")
    data = DataDir(tmp_path_factory.mktemp("registry-data"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(tracking.TRACKING_URI_ENV, raising=False)
        store = tracking.resolve_store(data)  # sqlite + the temp artifact root (new experiments keep it)
        mp.setenv(tracking.TRACKING_URI_ENV, store.uri)
        init_ray(num_cpus=4, runtime_env={"env_vars": {tracking.TRACKING_URI_ENV: store.uri}})
        try:
            yield store, ray
        finally:
            ray.shutdown()


def _swaps_to(ray: Any, coord: Any, version: str) -> list[dict]:
    """The coordinator's records of finished swaps to ``version`` (none while the swap is under way)."""
    return [s for s in ray.get(coord.status.remote(), timeout=30)["swaps"] if s["to"] == version]


def _register(store: tracking.TrackingStore, model: Any, schema: Any, run_name: str) -> str:
    with tracking.training_run(store, schema.pipeline, run_name):
        return model_registry.log_model_version(model, schema).version


def test_promote_hot_swaps_through_the_registry_alias(kafka_settings, registry_ray, tmp_path):
    store, ray = registry_ray
    settings, pipeline, schema, model_a, _ = scoring_stream(
        kafka_settings, "swapreg", PARTITIONS, tmp_path / "model-a", seed=0
    )
    model_b, _ = make_model(schema, tmp_path / "model-b", seed=1)
    v1 = _register(store, model_a, schema, "v1")
    v2 = _register(store, model_b, schema, "v2")
    model_registry.promote(store, pipeline, v1)
    name = model_registry.registered_model_name(pipeline)
    probe = AliasProbe(f"models:/{name}@champion")
    handle_1 = probe()
    assert handle_1.version == f"{name}/{v1}" and handle_1.locator == f"models:/{name}/{v1}"
    version_2 = f"{name}/{v2}"

    events = make_events(schema, 40_000, 300, seed=7)
    config = worker_config(settings, schema, tmp_path / "ckpt")
    coord = start_coordinator(
        config, handle_1, 2, PARTITIONS, model_probe=probe, probe_every_s=0.3, warmup_events=500
    )
    why = partial(coordinator_state, coord)  # what the coordinator says, on a timeout
    swapped = threading.Event()
    # a live stream (slices of 200 events, 0.1 s apart, at most 2000 ahead of the scoring) until the swap is
    # done, then 2000 more: loading v2 from the registry takes a while, and the challenger warms up on live
    # traffic
    t = threading.Thread(
        target=produce_until, args=(settings, schema, events, 200, swapped, 2000, lambda: scored_total(coord))
    )
    t.start()
    try:
        wait_for(lambda: scored_total(coord) >= 1500, 60, "scoring under way", explain=why)
        assert model_registry.promote(store, pipeline, v2) == v1  # `rnnstream models promote P 2`
        # the swap's record, not the model version: the coordinator serves v2 (status) before every worker
        # switched and the record is written
        # (loading v2 from the registry in every worker process is slow on a loaded machine: 120 s)
        wait_for(lambda: _swaps_to(ray, coord, version_2), 120, "the swap to v2 recorded", explain=why)
        swapped.set()
        t.join()
        wait_for(lambda: committed_all(settings, config), 120, "all events committed", explain=why)
        swap = _swaps_to(ray, coord, version_2)[0]
    finally:
        swapped.set()
        t.join()
        stop_coordinator(coord)
    print("swap:", swap)
    assert swap["from"] == handle_1.version and swap["to"] == version_2

    events_log = read_events(settings, config.events_topic, schema)
    scores = read_scores(settings, config.scores_topic)
    # every offset scored exactly once; v1's scores equal v1's offline forward, v2's its forward from warm-up
    verdict_1 = verify(
        events_log, scores, offline_reference(events_log, model_a), version_filter=handle_1.version
    )
    print(verdict_1.line)
    assert verdict_1.ok, verdict_1.line
    ref_2 = offline_reference(events_log, model_b, start_offsets=swap["warm_from_offsets"])
    verdict_2 = verify(events_log, scores, ref_2, version_filter=version_2)
    print(verdict_2.line)
    assert verdict_2.max_score_error <= 1e-5, verdict_2.line
    # the version changes at exactly one offset per partition, from v1's to v2's, at the recorded switch
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (p, off, _), v in zip(scores.positions, scores.versions, strict=True):
        by_partition[p].append((off, v))
    assert sorted(by_partition) == list(range(PARTITIONS))
    for p, rows in by_partition.items():
        rows.sort()
        changes = [i for i in range(1, len(rows)) if rows[i][1] != rows[i - 1][1]]
        assert len(changes) == 1, f"partition {p}: version changes at {len(changes)} places"
        assert rows[changes[0]][0] >= swap["switch_offsets"][p] > rows[changes[0] - 1][0]
        assert rows[0][1] == handle_1.version and rows[-1][1] == version_2
    # the swap is recorded on v2 in MLflow (written in the background, so wait for it)
    client = store.client()
    wait_for(lambda: "rnnstream.swapped_in" in client.get_model_version(name, v2).tags, 30, "the swap tag")
    tag = json.loads(client.get_model_version(name, v2).tags["rnnstream.swapped_in"])
    assert tag["from"] == v1 and tag["to"] == v2
    assert {int(p): o for p, o in tag["switch_offsets"].items()} == swap["switch_offsets"]
