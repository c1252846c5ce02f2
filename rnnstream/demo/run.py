"""The demo, one pipeline at a time: generate -> Kafka -> archive -> train -> register/promote -> serve.

For each pipeline:

1. generate a seeded stream (the pipeline's generator at its demo density), shifted whole days into the
   past if it would end in the future (the codec rejects events from the future); split it in time into a
   history (75 %) and a held-out live stream (25 %), keys continuing across the split;
2. produce the history into ``<pipeline>.events`` and archive it to Parquet with the archive sink;
3. train on the archive with Ray Train (``training_run.run_training``: MLflow run, stateful vs stateless
   on the history's held-out tail, registered version), unless a version registered for the same
   pipeline, data and settings exists (its fingerprint is a model-version tag); promote it to ``champion``;
4. serve the champion through the coordinator and workers, produce the live stream, kill a worker once
   (:mod:`rnnstream.demo.serving`);
5. quality on the live stream: the scores the workers committed vs a stateless baseline of the same size
   (trained on the same events, replayed through the same streaming code), and a check that the served
   scores equal an offline replay of the champion over the whole stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream import __version__
from rnnstream.data_dir import DataDir
from rnnstream.demo.services import DemoPaths, DemoServices, keep_own_sigint
from rnnstream.demo.serving import (
    ServingResult,
    create_topics,
    produce,
    serve_and_measure,
    worker_config,
)
from rnnstream.pipelines.spec import PIPELINE_NAMES, GeneratedStream, PipelineSpec, get_pipeline
from rnnstream.rnn_core.event_schema import TIME_COLUMN

FINGERPRINT_TAG = "rnnstream.demo.fingerprint"
MS_PER_DAY = 86_400_000
DEFAULT_EVENTS = 20_000


@dataclass(frozen=True)
class DemoSettings:
    """What ``rnnstream demo`` runs (CLI flags)."""

    pipelines: tuple[str, ...] = PIPELINE_NAMES
    events: int = DEFAULT_EVENTS
    live_fraction: float = 0.25
    seed: int = 0
    workers: int = 2
    train_workers: int = 2
    epochs: int | None = None
    fresh: bool = False
    kill_worker: bool = True
    live_seconds: float = 6.0


@dataclass
class TrainedModel:
    version: str
    run_id: str
    reused: bool
    seconds: float
    holdout: dict[str, float]
    holdout_baseline: dict[str, float]


@dataclass
class PipelineResult:
    """Everything the table and the report show about one pipeline."""

    spec: PipelineSpec
    model: TrainedModel
    serving: ServingResult
    live: GeneratedStream
    live_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    baseline_outputs: np.ndarray
    replay_max_abs_diff: float
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.spec.primary_metric


@dataclass
class DemoResult:
    settings: DemoSettings
    pipelines: list[PipelineResult]
    seconds: float
    tracking_uri: str
    failures: dict[str, str] = field(default_factory=dict)  # pipeline -> error


def shift_into_past(stream: GeneratedStream, now_ms: int | None = None) -> GeneratedStream:
    """The stream moved back by whole days (time of day kept) so that it ends at least a day before now."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    end = int(stream.times_ms().max())
    if end < now_ms - MS_PER_DAY:
        return stream
    days = math.ceil((end - now_ms + MS_PER_DAY) / MS_PER_DAY)
    table = stream.table
    i = table.schema.get_field_index(TIME_COLUMN)
    shifted = pa.array(stream.times_ms() - days * MS_PER_DAY, pa.timestamp("ms"))
    return GeneratedStream(table.set_column(i, table.schema.field(i), shifted), stream.truth, stream.info)


def fingerprint(spec: PipelineSpec, settings: DemoSettings, train_settings: Any) -> str:
    """What makes a demo model: pipeline schema and model, stream size and seed, training settings, code."""
    doc = {
        "pipeline": spec.name,
        "schema": spec.schema.to_dict(),
        "model": spec.model_config.to_dict(),
        "events": settings.events,
        "live_fraction": settings.live_fraction,
        "seed": settings.seed,
        "training": {k: v for k, v in vars(train_settings).items()},
        "rnnstream": __version__,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_pipeline(
    name: str,
    settings: DemoSettings,
    services: DemoServices,
    data_dir: DataDir,
    say: Callable[[str], None],
    bar: Callable[[str, int, int], None],
    waiting: Callable[[str], contextlib.AbstractContextManager] = lambda stage: contextlib.nullcontext(),
) -> PipelineResult:
    """Run one pipeline end to end (module docstring) and return what it measured."""
    from rnnstream.jobs import training as training_run
    from rnnstream.jobs.training_data import generate_events
    from rnnstream.rnn_core.evaluation import replay

    started = time.monotonic()
    stages: dict[str, float] = {}
    spec = get_pipeline(name)
    paths = services.paths
    kafka = services.kafka

    t = time.monotonic()
    stream = shift_into_past(generate_events(spec, settings.events, settings.seed))
    history, live, _ = stream.split_time(1.0 - settings.live_fraction)
    config = worker_config(spec, kafka, str(paths.checkpoints))
    partitions = spec.serving.partitions
    create_topics(kafka, config, partitions)
    sent = [0]

    def on_sent(n: int) -> None:
        sent[0] += n
        bar("producing", sent[0], history.num_events)

    produce(kafka, spec, history.table, on_sent)
    archived = _archive(kafka, spec, paths, history.num_events, bar)
    stages["generate+produce+archive"] = time.monotonic() - t
    say(
        f"{spec.name}: {stream.num_events:,} events of {_num_keys(stream):,} keys; "
        f"{history.num_events:,} history events produced and archived ({archived:,}), "
        f"{live.num_events:,} held out as the live stream"
    )

    t = time.monotonic()
    train_settings = training_run.default_settings(
        spec, epochs=settings.epochs, workers=settings.train_workers, seed=settings.seed
    )
    with waiting("training with Ray Train"):
        model = _train_or_reuse(spec, settings, train_settings, paths, data_dir, say)
    stages["train+register"] = time.monotonic() - t

    t = time.monotonic()
    baseline = _baseline(spec, settings, train_settings, paths, history)
    stages["baseline"] = time.monotonic() - t

    t = time.monotonic()
    handle, champion = _pin_champion(spec, paths, data_dir)
    serving = serve_and_measure(
        spec,
        kafka,
        config,
        handle,
        history,
        live,
        workers=settings.workers,
        partitions=partitions,
        live_seconds=settings.live_seconds,
        kill_worker=settings.kill_worker,
        seed=settings.seed,
        progress=bar,
        say=say,
    )
    stages["serve"] = time.monotonic() - t

    t = time.monotonic()
    present = ~np.isnan(serving.live_outputs[:, 0])
    live_seen = live.take(present) if not present.all() else live
    live_metrics = spec.evaluate(live_seen.table, serving.live_outputs[present], live_seen.truth)
    whole = pa.concat_tables([history.table, live.table])
    baseline_all = replay(baseline, whole)
    baseline_live = baseline_all[history.num_events :]
    baseline_metrics = spec.evaluate(live_seen.table, baseline_live[present], live_seen.truth)
    served_again = replay(champion, whole)[history.num_events :]
    diff = np.abs(served_again[present] - serving.live_outputs[present])
    stages["evaluate"] = time.monotonic() - t
    return PipelineResult(
        spec=spec,
        model=model,
        serving=serving,
        live=live,
        live_metrics=live_metrics,
        baseline_metrics=baseline_metrics,
        baseline_outputs=baseline_live,
        replay_max_abs_diff=float(np.nanmax(diff)) if diff.size else float("nan"),
        seconds=time.monotonic() - started,
        stage_seconds=stages,
    )


def _archive(kafka, spec: PipelineSpec, paths: DemoPaths, total: int, bar) -> int:
    """Run the archive sink until it has caught up with the events topic; returns events archived."""
    from rnnstream.workers.archive_sink import ArchiveSink

    bar("archiving", 0, total)
    with ArchiveSink(kafka, spec.schema, str(paths.archive), flush_interval_s=1.0) as sink:
        stats = sink.run(until_caught_up=True, max_seconds=600)
    bar("archiving", stats.events_written, total)
    return stats.events_written


def _train_or_reuse(
    spec, settings: DemoSettings, train_settings, paths: DemoPaths, data_dir, say
) -> TrainedModel:
    """A registered version for this fingerprint, or a new training run; promoted to champion either way."""
    from rnnstream.jobs import training as training_run
    from rnnstream.workers import model_registry as registry
    from rnnstream.workers.tracking import resolve_store

    store = resolve_store(data_dir)
    client = store.client()
    fp = fingerprint(spec, settings, train_settings)
    name = registry.registered_model_name(spec.name)
    started = time.monotonic()
    found = None if settings.fresh else _find_version(store, spec.name, fp)
    if found is not None:
        version, run_id = found
        metrics = client.get_run(run_id).data.metrics if run_id else {}
        say(
            f"{spec.name}: reusing registered {name} version {version} "
            "(same data and settings; --fresh retrains)"
        )
        reused = True
        holdout = {k.removeprefix("eval."): v for k, v in metrics.items() if k.startswith("eval.")}
        holdout_base = {
            k.removeprefix("baseline."): v for k, v in metrics.items() if k.startswith("baseline.")
        }
    else:
        request = training_run.TrainRequest(
            pipeline=spec.name, settings=train_settings, data=paths.archive, register=True
        )
        with keep_own_sigint():
            report = training_run.run_training(spec, request, data_dir, progress=lambda m: say(f"  {m}"))
        version, run_id, reused = report.version, report.run_id, False
        client.set_model_version_tag(name, version, FINGERPRINT_TAG, fp)
        holdout, holdout_base = dict(report.metrics), dict(report.baseline_metrics)
    previous = registry.promote(store, spec.name, version, "champion")
    if previous != version:
        say(f"{spec.name}: promoted {name} version {version} to @champion")
    return TrainedModel(
        version=version,
        run_id=run_id or "",
        reused=reused,
        seconds=time.monotonic() - started,
        holdout=holdout,
        holdout_baseline=holdout_base,
    )


def _find_version(store, pipeline: str, fp: str) -> tuple[str, str] | None:
    from rnnstream.workers import model_registry as registry

    client = store.client()
    name = registry.registered_model_name(pipeline)
    for info in reversed(registry.list_versions(store, pipeline)):
        mv = client.get_model_version(name, info.version)
        if (mv.tags or {}).get(FINGERPRINT_TAG) == fp:
            return str(mv.version), mv.run_id or ""
    return None


def _baseline(spec: PipelineSpec, settings: DemoSettings, train_settings, paths: DemoPaths, history):
    """The stateless twin of the champion, trained on the same events (kept on disk across runs)."""
    from rnnstream.jobs.stateless_baseline import fit_stateless_baseline
    from rnnstream.jobs.training_data import split_by_time
    from rnnstream.rnn_core.serialization import load_model, save_model

    folder = paths.baselines / f"{spec.name}-{fingerprint(spec, settings, train_settings)}"
    if folder.is_dir() and not settings.fresh:
        return load_model(folder)
    split_ms = split_by_time(history.table, train_settings.holdout_fraction)
    times = history.times_ms()
    train = history.table.take(pa.array(np.flatnonzero(times < split_ms)))
    model = fit_stateless_baseline(spec.model_config, train, spec.label_column, train_settings)
    save_model(model, folder)
    return model


def _pin_champion(spec: PipelineSpec, paths: DemoPaths, data_dir: DataDir):
    """The version @champion names now, its weights copied to a local folder the workers load from.

    Workers then read safetensors from disk instead of importing MLflow, so a restarted worker is back
    sooner; every score still carries the registry version (``rnnstream-<p>/<n>``).
    """
    from rnnstream.rnn_core.serialization import META_FILE, save_model
    from rnnstream.workers import model_registry as registry
    from rnnstream.workers.serving import resolve_model
    from rnnstream.workers.tracking import resolve_store

    store = resolve_store(data_dir)
    loaded = registry.load_version(
        f"models:/{registry.registered_model_name(spec.name)}@champion", store=store
    )
    version = f"{loaded.name}/{loaded.version}"
    folder = paths.models / version.replace("/", "-v")
    save_model(loaded.model, folder / "weights")
    (folder / META_FILE).write_text(json.dumps({"version": version, "pipeline": spec.name}))
    return resolve_model(folder), loaded.model


def _num_keys(stream: GeneratedStream) -> int:
    return len(pc.unique(stream.table.column("key")))
