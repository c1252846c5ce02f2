"""Every job the chart renders runs and does its job, for the default values and every ``ci/*.yaml`` profile.

For each profile: render with the real helm; write the ConfigMap's files where the pods mount them (a
temporary folder here, the one path the entrypoints name rewritten); take each RayJob's entrypoint and the
environment of the Ray head pod it runs on; point only the endpoints at local stand-ins (embedded broker,
sqlite MLflow, moto for ``s3://``, gcp-storage-emulator for ``gs://``, a local Ray whose processes get the
pod environment); and run the entrypoint as a subprocess, as KubeRay would. Each job must do its job:

- ``archive`` writes the produced events under the config's ``archive.uri``;
- ``train`` registers a new version (``--use-gpu`` on this machine without a GPU ends with one clear line,
  exit 2; the same job without it trains);
- ``backfill`` writes one score per archived event of the day it names;
- ``serve`` scores the 2,000 produced events exactly once (read_committed), equal to the offline
  reference, and stops cleanly on SIGTERM with final checkpoints on the object store.

What the stand-ins cannot be: the embedded broker speaks PLAINTEXT only (the SASL/SSL settings of the
``sasl-kafka`` profile are dropped, the broker address replaced) and the local Ray has no token from the
chart's Secret (``RAY_AUTH_*`` dropped).

Each profile is rendered with ``training.epochs`` set to 2 (TRAIN_BRIEFLY): a train job must train, evaluate
and register, which 2 epochs do as well as the profile's 20; every other value is the profile's (4 Ray
Train workers, ``--use-gpu``, its data and checkpoint URIs). 20 epochs of 4 DDP workers took ~70 of this
test's ~140 s alone and up to 190 s in the whole suite on 2 cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.deploy.conftest import PROFILES
from tests.deploy.deployment import EVENTS, Deployment, running
from tests.deploy.stand_ins import RenderedJob, stop_process

pytestmark = pytest.mark.timeout(900)
TRAIN_BRIEFLY = ("--set", "training.epochs=2")  # the one value changed; ignored where training is off


# ---------------------------------------------------------------------------------------------- job checks
def check_archive(dep: Deployment, job: RenderedJob) -> None:
    from rnnstream.workers.archive_sink import archive_dataset

    dep.produce(job.pipeline)
    root = dep.run_config().archive.uri
    assert root, "the chart's config has no archive.uri for the archive job to write to"
    proc, log = dep.start_job(job)

    def archived() -> int:
        try:
            return archive_dataset(root).count_rows()
        except (FileNotFoundError, OSError):
            return 0

    deadline = time.monotonic() + 180
    while archived() < EVENTS:
        assert proc.poll() is None, f"{job.name} exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, (
            f"{job.name} archived {archived()} of {EVENTS}:\n{log.read_text()}"
        )
        time.sleep(0.5)
    rc = stop_process(proc, timeout_s=60)
    assert rc == 0, f"{job.name} did not stop cleanly on SIGTERM (exit {rc}):\n{log.read_text()}"
    assert archived() == EVENTS


def seed_archive(dep: Deployment, pipeline: str) -> None:
    """Training data where the config's archive lives (what a running archive job would have written)."""
    from rnnstream.pipelines.spec import get_pipeline
    from rnnstream.workers.archive_sink import ArchiveSink

    dep.produce(pipeline)
    with ArchiveSink(dep.settings, get_pipeline(pipeline).schema, dep.run_config().archive.uri) as sink:
        stats = sink.run(until_caught_up=True)
    assert stats.events_written == EVENTS


def check_train(dep: Deployment, job: RenderedJob) -> None:
    assert job.flag("--epochs") == "2", job.argv  # TRAIN_BRIEFLY reached the rendered entrypoint
    seed_archive(dep, job.pipeline)
    before = dep.registered_versions(job.pipeline)
    if "--use-gpu" in job.argv and not torch.cuda.is_available():
        rc, out = dep.run_job(job, timeout_s=300)
        lines = [line for line in out.splitlines() if line.strip()]
        assert rc == 2 and "--use-gpu" in lines[-1] and "GPU" in lines[-1], out
        assert not any("Traceback" in line for line in lines), out
        rc, out = dep.run_job(job, timeout_s=600, drop=("--use-gpu",))
    else:
        rc, out = dep.run_job(job, timeout_s=600)
    assert rc == 0, f"{job.name} failed:\n{out}"
    assert dep.registered_versions(job.pipeline) == before + 1, out


def check_backfill(dep: Deployment, job: RenderedJob) -> None:
    import pyarrow.dataset as ds

    from rnnstream.rnn_core.storage import resolve_filesystem

    fs, path = resolve_filesystem(job.flag("--data"))
    archived = ds.dataset(path, filesystem=fs, format="parquet").count_rows()
    assert archived > 0, f"nothing archived under {job.flag('--data')} for {job.name} to score"
    rc, out = dep.run_job(job, timeout_s=300)
    assert rc == 0, f"{job.name} failed:\n{out}"
    fs, path = resolve_filesystem(job.flag("--output"))
    scores = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    assert scores.num_rows == archived, out
    assert np.isfinite(scores.column("score").to_numpy()).all()


def check_serve(dep: Deployment, job: RenderedJob) -> None:
    from rnnstream.pipelines.spec import get_pipeline
    from rnnstream.workers import model_registry
    from rnnstream.workers.kafka_io import topic_names
    from rnnstream.workers.score_verifier import (
        checkpoint_states,
        offline_reference,
        read_events,
        read_scores,
        verify,
    )

    spec = get_pipeline(job.pipeline)
    dep.produce(job.pipeline)
    proc, log = dep.start_job(job)
    dep.wait_scored(job, proc, log, EVENTS)
    rc = stop_process(proc, timeout_s=120)
    assert rc == 0, f"{job.name} did not stop cleanly on SIGTERM (exit {rc}):\n{log.read_text()}"

    loaded = model_registry.load_version(job.flag("--model"), store=dep.tracking_store())
    run = dep.run_config()
    ttl_ms = run.serving.apply_to(spec.serving).key_ttl_ms
    events = read_events(dep.settings, topic_names(job.pipeline).events, spec.schema)
    scores = read_scores(dep.settings, dep.scores_topic(job))
    reference = offline_reference(events, loaded.model, key_ttl_ms=ttl_ms)
    (version,) = set(scores.versions)  # one model version served (the champion's, e.g. rnnstream-fraud/1)
    assert version.endswith(f"/{loaded.version}"), version
    partitions = list(range(dep.partitions(job.pipeline)))
    states = checkpoint_states(
        job.flag("--checkpoint-uri"), job.pipeline, partitions, loaded.model, version,
        deployment=job.flag("--deployment-name"),
    )  # fmt: skip
    verdict = verify(events, scores, reference, states, mode="exactly_once")
    print(job.name, verdict.line)
    assert verdict.ok and verdict.scored == EVENTS and verdict.expected == EVENTS, verdict.line
    assert verdict.state_keys_checked > 0, "no final checkpoint was found on the object store"


CHECKS = {"archive": check_archive, "train": check_train, "backfill": check_backfill, "serve": check_serve}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_rendered_job_runs_against_stand_ins(profile: str, render, tmp_path: Path) -> None:
    dep = Deployment(render(profile, extra=TRAIN_BRIEFLY), tmp_path)
    assert dep.jobs, f"profile {profile} renders no RayJob"
    with running(dep):
        dep.seed_models()
        for job in dep.jobs:
            started = time.monotonic()
            CHECKS[job.role](dep, job)
            print(f"{profile}: {job.name} ({job.role}) ok in {time.monotonic() - started:.1f} s")
