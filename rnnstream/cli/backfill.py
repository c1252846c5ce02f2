"""``rnnstream backfill``: score an archived range of events with one model version; scores go to Parquet.

The Helm chart's backfill RayJob (and ``deploy/jobs/backfill.yaml``) runs::

    rnnstream backfill --pipeline fraud --model models:/rnnstream-fraud@champion \\
        --data s3://rnnstream-archive/events/pipeline=fraud --output s3://rnnstream-backfill/fraud

with ``$RNNSTREAM_CONFIG`` pointing at the chart's config file (``--config`` names it explicitly). Scoring is
the serving code path (:mod:`rnnstream.jobs.backfill`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rnnstream.jobs.backfill_defaults import DEFAULT_BATCH_EVENTS, DEFAULT_WINDOW_EVENTS

MODELS_URI_SCHEME = "models:/"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backfill",
        help="score an archived range of events with one model version (writes Parquet scores)",
        description="Score archived events in event-time order through the serving code path and write "
        "key, time, Kafka provenance, model version and the model's outputs as Parquet.",
    )
    p.add_argument("--pipeline", required=True, help="pipeline name (fraud, monitoring-metrics, ...)")
    p.add_argument(
        "--model",
        default=None,
        help="a local model folder or models:/<name>@<alias> | models:/<name>/<version> "
        "(default: the config's model_uri for the pipeline, else models:/rnnstream-<pipeline>@champion)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="the archive root, its pipeline=<name> folder, a date=<day> folder or any Parquet file/folder, "
        "local or a pyarrow.fs URI such as s3://... (default: the config's archive.uri, else the local "
        "archive)",
    )
    p.add_argument("--output", required=True, help="folder or URI prefix for the score files")
    p.add_argument(
        "--start", default=None, help="first event time to score, inclusive (ISO date or time; UTC)"
    )
    p.add_argument("--end", default=None, help="end of the range, exclusive (ISO date or time; UTC)")
    p.add_argument("--config", default=None, help="deployment config file (default: $RNNSTREAM_CONFIG)")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: env, then the config)")
    p.add_argument("--batch-events", type=int, default=DEFAULT_BATCH_EVENTS, help="events per scoring step")
    p.add_argument(
        "--window-events",
        type=int,
        default=DEFAULT_WINDOW_EVENTS,
        help="days are read and sorted together up to this many events (bounds memory; default %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the files already under --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnstream.data_dir import DataDir
    from rnnstream.jobs.backfill import backfill
    from rnnstream.jobs.backfill_source import TimeRange, open_events
    from rnnstream.pipelines.spec import get_pipeline
    from rnnstream.run_config import load_run_config

    spec = get_pipeline(args.pipeline)  # ConfigError (one line) for an unknown pipeline
    config = load_run_config(args.config)
    time_range = TimeRange.parse(args.start, args.end)
    deployed = config.pipelines.get(spec.name)
    model_source = args.model or (
        deployed.model_uri if deployed else f"models:/rnnstream-{spec.name}@champion"
    )
    data = args.data or config.archive.uri or str(DataDir.default().archive)
    source = open_events(data, spec.name)
    model, version, meta = load_scoring_model(model_source, args.mlflow_uri or config.tracking_uri())
    check_model_pipeline(meta, spec.name, model_source)
    print(
        f"backfill {spec.name}: model {model_source} (version {version}), data {data}, "
        f"range {time_range.describe()} -> {args.output}",
        file=sys.stderr,
    )
    result = backfill(
        model,
        version,
        source,
        args.output,
        time_range,
        batch_events=args.batch_events,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        max_window_events=args.window_events,
        key_ttl_ms=config.serving.apply_to(spec.serving).key_ttl_ms,
    )
    rate = result.events / result.seconds if result.seconds > 0 else 0.0
    print(
        f"scored {result.events} events of {result.days} days with model version {result.model_version} "
        f"in {result.seconds:.1f} s ({rate:,.0f} events/s) -> {len(result.files)} files under {result.output}"
    )
    return 0


def load_scoring_model(source: str, tracking_uri: str | None = None) -> tuple[Any, str, dict[str, Any]]:
    """(model in eval mode, version string, meta) from a local folder or ``models:/...``; one-line errors.

    A folder written by ``save_model`` is read directly (version ``local:<folder>@<digest>``); a downloaded
    MLflow model folder or a registry URI goes through :func:`rnnstream.workers.model_registry.load_version`.
    Weights are safetensors and JSON only (never unpickled).
    """
    from rnnstream.errors import UsageError

    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        from rnnstream.rnn_core.serialization import ModelFormatError, load_model, local_model_version

        try:
            model = load_model(path)
        except (ModelFormatError, ValueError, OSError) as exc:
            raise UsageError(f"cannot load the model in {path}: {exc}") from None
        model.eval()
        return model, local_model_version(path), {}
    if not path.is_dir() and not source.startswith(MODELS_URI_SCHEME):
        raise UsageError(
            f"--model {source!r} is neither a model folder nor models:/<name>@<alias> "
            "(e.g. models:/rnnstream-fraud@champion)"
        )
    from rnnstream.workers import model_registry
    from rnnstream.workers.tracking import resolve_store

    try:
        store = resolve_store(uri=tracking_uri) if not path.is_dir() else None
        loaded = model_registry.load_version(source, store=store)
    except model_registry.RegistryError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # MLflow: unreachable server, missing artifacts, bad model folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load model {source}: {first}") from None
    return loaded.model, loaded.version, dict(loaded.meta)


def check_model_pipeline(meta: dict[str, Any], pipeline: str, source: str) -> None:
    """A registered model names the pipeline it was trained for: it must be this one."""
    from rnnstream.errors import UsageError

    model_pipeline = meta.get("pipeline")
    if model_pipeline and str(model_pipeline).replace("_", "-") != pipeline:
        raise UsageError(f"model {source} was trained for pipeline {model_pipeline!r}, not {pipeline!r}")
