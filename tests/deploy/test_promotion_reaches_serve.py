"""Promotion reaches the cluster (issue 13, item 5): the chart's serve job follows the ``champion`` alias.

The default profile is rendered with the real helm (its alias poll and warm-up set through the chart's own
values, ``serving.probeEverySeconds`` and ``serving.warmupEvents``, so the test runs in seconds); the fraud
serve RayJob's entrypoint runs as a subprocess with the ConfigMap and the head pod's environment against the
stand-ins (embedded broker, sqlite MLflow, moto S3, a local Ray). While it scores, a second version is
registered and ``rnnstream models promote`` moves ``champion`` to it; events keep coming. Checked from the
scores topic (read_committed): every event scored exactly once; per partition the version changes once, from
v1 to v2, at the switch offset the job recorded (its control record on the object store); v1's scores equal
v1's offline StreamScorer run, v2's equal v2's run from the warm-up start, as do v2's final checkpoints.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.deploy.deployment import RNNSTREAM, Deployment, running
from tests.deploy.stand_ins import stop_process

PIPELINE = "fraud"
KEYS = 40
BEFORE = 1000  # events scored by v1 before the promotion
SLICE = 100  # events produced at a time while the swap is under way
AFTER = 600  # events produced once v2 scores
MAX_SLICES = 60
WARMUP_EVENTS = 150  # per worker: the challenger's live warm-up before the switch
# 2025-01-01T00:00Z: the whole generated stream (about half a year of event time) lies in the past, so no
# event is dead-lettered as coming from the future
STREAM_START_MS = 1_735_689_600_000
FAST_SWAP = (
    "--set",
    "serving.probeEverySeconds=1",
    "--set",
    f"serving.warmupEvents={WARMUP_EVENTS}",
)

pytestmark = pytest.mark.timeout(600)


def _register_version(dep: Deployment, seed: int) -> str:
    """A new version of the pipeline's model (other weights), as a training run registers it."""
    from rnnstream.pipelines.spec import get_pipeline
    from rnnstream.rnn_core.model import StreamingModel
    from rnnstream.workers import model_registry, tracking

    spec = get_pipeline(PIPELINE)
    torch.manual_seed(seed)
    model = StreamingModel(spec.model_config).eval()
    with tracking.training_run(dep.tracking_store(), spec.name, f"retrained-{seed}"):
        return model_registry.log_model_version(model, spec.schema).version


def _promote(dep: Deployment, version: str) -> None:
    """``rnnstream models promote fraud <version>``, as an operator runs it."""
    argv = [str(RNNSTREAM), "models", "--tracking-uri", dep.mlflow_uri, "promote", PIPELINE, version]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=dep.root)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"


def test_promoting_a_version_swaps_the_rendered_serve_job(render, tmp_path: Path) -> None:
    from rnnstream.pipelines.spec import get_pipeline
    from rnnstream.workers import model_registry
    from rnnstream.workers.control_record import ControlRecordFile
    from rnnstream.workers.kafka_io import topic_names
    from rnnstream.workers.score_verifier import (
        checkpoint_states,
        offline_reference,
        read_events,
        read_scores,
        verify,
    )
    from rnnstream.workers.worker_config import WorkerConfig

    dep = Deployment(render("default", extra=FAST_SWAP), tmp_path)
    job = dep.job("serve", PIPELINE)
    assert "--follow-alias" in job.argv and job.flag("--probe-every-s") == "1", job.argv
    spec = get_pipeline(PIPELINE)
    stream = spec.generate(BEFORE + MAX_SLICES * SLICE + AFTER, KEYS, seed=7, start_ms=STREAM_START_MS).table
    with running(dep):
        dep.seed_models()  # v1, @champion: what the rendered --model names
        store = dep.tracking_store()
        name = model_registry.registered_model_name(spec.name)
        v1 = f"{name}/{model_registry.alias_version(store, spec.name, 'champion')}"
        dep.create_topics(PIPELINE)
        dep.send(PIPELINE, stream.slice(0, BEFORE))
        sent = BEFORE
        proc, log = dep.start_job(job)
        try:
            dep.wait_scored(job, proc, log, BEFORE)
            v2 = f"{name}/{_register_version(dep, seed=1)}"
            _promote(dep, v2.rsplit("/", 1)[1])
            # keep the stream coming until v2 serves (the challenger warms up on live traffic): a slice
            # each time the one before is scored
            while v2 not in set(dep.wait_scored(job, proc, log, sent).versions):
                assert sent + SLICE + AFTER <= stream.num_rows, (
                    f"{sent - BEFORE} events since the promotion, no score of {v2}:\n{log.read_text()}"
                )
                dep.send(PIPELINE, stream.slice(sent, SLICE))
                sent += SLICE
            dep.send(PIPELINE, stream.slice(sent, AFTER))
            sent += AFTER
            dep.wait_scored(job, proc, log, sent)
        finally:
            rc = stop_process(proc, timeout_s=120)
        assert rc == 0, f"{job.name} did not stop cleanly on SIGTERM (exit {rc}):\n{log.read_text()}"
        config = WorkerConfig(
            pipeline=PIPELINE,
            schema=spec.schema,
            kafka=dep.settings,
            checkpoint_uri=job.flag("--checkpoint-uri"),
            deployment=job.flag("--deployment-name"),
        )
        record = ControlRecordFile(config).read()
        assert record is not None and record.serving.version == v2, record
        (swap,) = record.swaps
        assert (swap["from"], swap["to"]) == (v1, v2), swap
        model_1 = model_registry.load_version(f"models:/{v1}", store=store).model
        model_2 = model_registry.load_version(f"models:/{v2}", store=store).model
        partitions = list(range(dep.partitions(PIPELINE)))
        states_2 = checkpoint_states(
            config.checkpoint_uri, PIPELINE, partitions, model_2, v2, deployment=config.deployment
        )
        events = read_events(dep.settings, topic_names(PIPELINE).events, spec.schema)
        scores = read_scores(dep.settings, dep.scores_topic(job))

    ttl_ms = dep.run_config().serving.apply_to(spec.serving).key_ttl_ms
    assert events.batch.num_rows == sent
    # every event scored exactly once; v1's scores are v1's offline StreamScorer run over the whole stream
    reference_1 = offline_reference(events, model_1, key_ttl_ms=ttl_ms)
    verdict_1 = verify(events, scores, reference_1, version_filter=v1)
    print(verdict_1.line)
    assert verdict_1.ok and verdict_1.scored == sent == verdict_1.expected, verdict_1.line
    # v2's scores and final states are v2's offline run from where its challenger started (the warm-up)
    warm_from = {int(p): int(o) for p, o in swap["warm_from_offsets"].items()}
    reference_2 = offline_reference(events, model_2, start_offsets=warm_from, key_ttl_ms=ttl_ms)
    verdict_2 = verify(events, scores, reference_2, states_2, version_filter=v2)
    print(verdict_2.line)
    assert verdict_2.versions[v2] > 0 and verdict_2.max_score_error <= 1e-5, verdict_2.line
    assert verdict_2.state_keys_checked > 0 and verdict_2.max_state_error <= 1e-5, verdict_2.line
    # per partition: v1 up to the recorded switch offset, v2 from it on, one change, never back
    switch = {int(p): int(o) for p, o in swap["switch_offsets"].items()}
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (p, offset, _), version in zip(scores.positions, scores.versions, strict=True):
        by_partition[p].append((offset, version))
    assert by_partition, "no scores"
    for p, rows in by_partition.items():
        rows.sort()
        assert all(v == (v1 if off < switch[p] else v2) for off, v in rows), f"partition {p}: {rows}"
        assert rows[0][1] == v1 and rows[-1][1] == v2, f"partition {p} did not switch from v1 to v2"
