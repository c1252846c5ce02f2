"""Two releases on one Kafka don't collide (issue 13, item 6).

The default profile is rendered with the real helm as two releases, ``blue`` and ``green``: same Kafka, same
checkpoint bucket, same MLflow, each with its own Ray (as each release brings its own RayCluster). Both
fraud serve jobs run at once over the same ``fraud.events``. Each must score every event exactly once into
its own scores topic (``fraud.blue.scores``, ``fraud.green.scores``: a release's consumer group,
transactional ids, checkpoints, control record and output topics carry its name), equal to the offline
run; neither is fenced by the other nor restarts; each commits its own group to the end and leaves its own
final checkpoints; the default release's ``fraud.scores`` stays empty.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.deployment import EVENTS, Deployment, running
from tests.deploy.stand_ins import stop_process
from tests.workers.worker_harness import wait_for

PIPELINE = "fraud"
RELEASES = ("blue", "green")
# One scoring worker per release (the chart's pipelines[].workers): both use worker slot 0, the one
# transactional id they would share without the release name; and half the processes on a small machine.
ONE_WORKER = ("--set-json", 'pipelines=[{"name": "fraud", "partitions": 12, "workers": 1}]')

pytestmark = pytest.mark.timeout(600)


def _last_status(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith(f"{PIPELINE} model=")]
    assert lines, f"no status line in the serve log:\n{log}"
    return lines[-1]


def test_two_releases_serve_one_pipeline_on_one_kafka_apart(render, tmp_path: Path) -> None:
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
    from rnnstream.workers.worker_config import WorkerConfig, committed_all, transactional_id

    docs = [render("default", release=r, extra=ONE_WORKER) for r in RELEASES]
    first = Deployment(docs[0], tmp_path / RELEASES[0])
    second = Deployment(docs[1], tmp_path / RELEASES[1], share=first)
    deps = (first, second)
    jobs = [dep.job("serve", PIPELINE) for dep in deps]
    assert [job.flag("--deployment-name") for job in jobs] == list(RELEASES)
    assert [job.flag("--workers") for job in jobs] == ["1", "1"]
    assert len({job.flag("--checkpoint-uri") for job in jobs}) == 1, "the releases share one bucket"
    spec = get_pipeline(PIPELINE)
    configs = [
        WorkerConfig(
            pipeline=PIPELINE,
            schema=spec.schema,
            kafka=first.settings,
            checkpoint_uri=job.flag("--checkpoint-uri"),
            deployment=job.flag("--deployment-name"),
        )
        for job in jobs
    ]
    written = {t for c in configs for t in (c.scores_topic, c.dlq_topic, c.shadow_topic)}
    assert len(written | {topic_names(PIPELINE).scores}) == 7, written
    assert transactional_id(configs[0], 0) != transactional_id(configs[1], 0)
    with running(*deps):
        first.seed_models()
        first.produce(PIPELINE)
        runs = [dep.start_job(job) for dep, job in zip(deps, jobs, strict=True)]
        try:
            for dep, job, (proc, log) in zip(deps, jobs, runs, strict=True):
                dep.wait_scored(job, proc, log, EVENTS)
            # each release's own group commits every event: the transaction that made the last scores
            # visible also commits the offsets, but a transaction's commit markers reach the scores
            # partitions and the group's offsets one after the other (Kafka does not order them), so the
            # offsets are waited for, not assumed at the moment the scores show
            for config in configs:
                done = lambda c=config: committed_all(first.settings, c)  # noqa: E731
                wait_for(done, 60, f"{config.group_id} to commit every event")
        finally:
            codes = [stop_process(proc, timeout_s=120) for proc, _ in runs]
        logs = [log.read_text() for _, log in runs]
        for job, config, rc, log in zip(jobs, configs, codes, logs, strict=True):
            assert rc == 0, f"{job.name} did not stop cleanly on SIGTERM (exit {rc}):\n{log}"
            assert f"scores into {config.scores_topic} " in log, log  # the job says where its scores go
            status = _last_status(log)
            assert re.search(r" restarts=0 ", status) and "FAILING" not in status, status
        loaded = model_registry.load_version(jobs[0].flag("--model"), store=first.tracking_store())
        partitions = list(range(first.partitions(PIPELINE)))
        events = read_events(first.settings, topic_names(PIPELINE).events, spec.schema)
        scores = [read_scores(first.settings, c.scores_topic) for c in configs]
        states = [
            checkpoint_states(
                c.checkpoint_uri, PIPELINE, partitions, loaded.model, f"{loaded.name}/{loaded.version}",
                deployment=c.deployment,
            )
            for c in configs
        ]  # fmt: skip
        records = [ControlRecordFile(c).read() for c in configs]
        default_scores = read_scores(first.settings, topic_names(PIPELINE).scores)

    ttl_ms = first.run_config().serving.apply_to(spec.serving).key_ttl_ms
    reference = offline_reference(events, loaded.model, key_ttl_ms=ttl_ms)
    for config, got, final, record in zip(configs, scores, states, records, strict=True):
        verdict = verify(events, got, reference, final, mode="exactly_once")
        print(config.deployment, verdict.line)
        assert verdict.ok and verdict.scored == EVENTS == verdict.expected, verdict.line
        assert verdict.state_keys_checked > 0, f"{config.deployment}: no final checkpoint of its own"
        assert record is not None and record.stopped, f"{config.deployment}: no control record of its own"
    assert not default_scores.positions, "a release wrote into the default release's scores topic"
