"""``rnnstream models list|review|promote|rollback``: the pipeline models registered in MLflow.

``review`` puts versions side by side (metrics, baseline gap, differing parameters, data range, size, step
latency) in the terminal and in an HTML page under ``<data>/reports``; ``--backtest N`` also replays one fixed
stream of N generated events through every version. ``promote`` points an alias (``champion`` serves,
``challenger`` shadows) at a version; ``rollback`` moves it back to where it pointed before.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from rnnstream.data_dir import DataDir
from rnnstream.errors import UsageError

ALIASES = ("champion", "challenger")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, review, promote and roll back registered models")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or local)"
    )
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)

    ls = sub.add_parser("list", help="registered versions with their aliases and headline metrics")
    ls.add_argument("--pipeline", default=None, help="only this pipeline")
    ls.set_defaults(func=run_list)

    review = sub.add_parser("review", help="versions side by side (terminal table + HTML page)")
    review.add_argument("pipeline")
    review.add_argument("--versions", default=None, help="comma-separated versions (default: the last 5)")
    review.add_argument(
        "--backtest",
        type=int,
        default=0,
        metavar="N",
        help="also replay N generated events through every version",
    )
    review.add_argument("--seed", type=int, default=7, help="seed of the backtest stream (default 7)")
    review.set_defaults(func=run_review)

    promote = sub.add_parser("promote", help="point an alias at a version")
    promote.add_argument("pipeline")
    promote.add_argument("version")
    promote.add_argument("--alias", choices=ALIASES, default="champion")
    promote.set_defaults(func=run_promote)

    rollback = sub.add_parser("rollback", help="move an alias back to the version it pointed at before")
    rollback.add_argument("pipeline")
    rollback.add_argument("--alias", choices=ALIASES, default="champion")
    rollback.set_defaults(func=run_rollback)


def _store(args: argparse.Namespace):
    from rnnstream.workers.tracking import resolve_store

    return resolve_store(DataDir.default(), args.tracking_uri)


def _registry_errors(fn):
    """Turn registry mistakes (unknown version, no alias) into the CLI's one-line usage errors."""

    def wrapped(args: argparse.Namespace) -> int:
        from rnnstream.workers.model_registry import RegistryError

        try:
            return fn(args)
        except RegistryError as exc:
            raise UsageError(str(exc)) from exc

    return wrapped


@_registry_errors
def run_list(args: argparse.Namespace) -> int:
    from rnnstream.workers.model_registry import list_versions

    store = _store(args)
    versions = list_versions(store, args.pipeline)
    if not versions:
        where = f" for {args.pipeline}" if args.pipeline else ""
        print(f"no registered models{where} in {store.uri} (train one: rnnstream train --pipeline P)")
        return 0
    client = store.client()
    print(f"{'model':<32} {'version':>7}  {'aliases':<20} {'created (UTC)':<19}  headline")
    for v in versions:
        headline = ""
        if v.run_id:
            headline = _headline(client.get_run(v.run_id).data)
        created = datetime.fromtimestamp(v.created_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{v.name:<32} {v.version:>7}  {','.join(v.aliases) or '-':<20} {created:<19}  {headline}")
    return 0


def _headline(run_data) -> str:
    """The run's primary metric against the stateless baseline (else its first evaluation metrics)."""
    metrics = run_data.metrics
    primary = run_data.tags.get("rnnstream.primary_metric")
    if primary and f"eval.{primary}" in metrics:
        text = f"{primary}={metrics[f'eval.{primary}']:.4f}"
        if f"baseline.{primary}" in metrics:
            text += f" (stateless baseline {metrics[f'baseline.{primary}']:.4f})"
        return text
    shown = sorted(k for k in metrics if k.startswith("eval."))[:3]
    return "  ".join(f"{k[5:]}={metrics[k]:.4f}" for k in shown)


@_registry_errors
def run_review(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rnnstream.jobs import review as model_review

    store = _store(args)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()] if args.versions else None
    review = model_review.review_versions(store, args.pipeline, versions)
    if args.backtest > 0:
        review = replace(review, backtest=_backtest(store, args.pipeline, review, args.backtest, args.seed))
    print(model_review.render_text(review))
    path = model_review.write_html(review, DataDir.default().reports)
    print(f"HTML review: {path}")
    return 0


def _backtest(store, pipeline: str, review, num_events: int, seed: int) -> dict[str, dict[str, float]]:
    from rnnstream.jobs.holdout import pipeline_metrics, replay_outputs
    from rnnstream.jobs.review import backtest
    from rnnstream.jobs.training_data import generate_events
    from rnnstream.workers.model_registry import load_version

    spec = _spec(pipeline)
    stream = generate_events(spec, num_events, seed)
    loaded = [load_version(f"models:/{r.info.name}/{r.version}", store=store) for r in review.versions]
    return backtest(
        loaded,
        stream.table,
        replay=lambda model, t: replay_outputs(model, t, spec),
        metrics=lambda outputs, t: pipeline_metrics(spec, outputs, t, stream.truth),
    )


def _spec(pipeline: str):
    from rnnstream.pipelines.spec import PIPELINE_NAMES, get_pipeline

    if pipeline not in PIPELINE_NAMES:
        raise UsageError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINE_NAMES)}")
    return get_pipeline(pipeline)


@_registry_errors
def run_promote(args: argparse.Namespace) -> int:
    from rnnstream.workers.model_registry import promote, registered_model_name

    previous = promote(_store(args), args.pipeline, args.version, args.alias)
    was = f" (was version {previous})" if previous else ""
    print(f"{registered_model_name(args.pipeline)}@{args.alias} -> version {args.version}{was}")
    return 0


@_registry_errors
def run_rollback(args: argparse.Namespace) -> int:
    from rnnstream.workers.model_registry import registered_model_name, rollback

    old, new = rollback(_store(args), args.pipeline, args.alias)
    print(f"{registered_model_name(args.pipeline)}@{args.alias} rolled back: version {old} -> version {new}")
    return 0
