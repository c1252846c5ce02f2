"""``rnnstream config show``: the settings a ``serve`` job would run with, and where each value came from.

What an operator runs first when a pod misbehaves: it reads the same file, environment and flags ``serve``
reads, through the same function (:func:`rnnstream.serving_config.effective_serving`), and prints one line a
setting with its origin (default, pipeline default, file, env, flag), as ``git config --show-origin`` does.
Secrets (Kafka passwords, the MLflow login's password) are masked.
"""

from __future__ import annotations

import argparse
import json
import os

from rnnstream.cli.topics import add_kafka_args
from rnnstream.serving_config import add_serving_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("config", help="show the effective settings and where each came from")
    sub = p.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    s = sub.add_parser("show", help="the settings `serve` would use, with origins (secrets masked)")
    s.add_argument("--config", default=None, help="the run-config file (default $RNNSTREAM_CONFIG)")
    s.add_argument(
        "--pipeline", default=None, help="pipeline to show (default: the only one the config file lists)"
    )
    s.add_argument("--checkpoint-uri", default=None, help="as `serve --checkpoint-uri`")
    s.add_argument("--deployment-name", default=None, help="as `serve --deployment-name`")
    s.add_argument("--model", default=None, help="as `serve --model`")
    s.add_argument("--workers", type=int, default=None, help="as `serve --workers`")
    s.add_argument("--json", action="store_true", help="print a JSON list of {setting, value, origin}")
    add_kafka_args(s)
    add_serving_flags(s)
    s.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from rnnstream.cli.serve import serving_from_args
    from rnnstream.data_dir import DataDir
    from rnnstream.errors import UsageError
    from rnnstream.pipelines.sample_stream import resolve_schema
    from rnnstream.run_config import load_run_config
    from rnnstream.workers.worker_config import transactional_id

    run = load_run_config(args.config)
    pipeline = args.pipeline
    if pipeline is None:
        if len(run.pipelines) != 1:
            listed = ", ".join(sorted(run.pipelines)) or "none"
            raise UsageError(f"pass --pipeline (the config {run.source} lists: {listed})")
        (pipeline,) = run.pipelines
    effective = serving_from_args(args, pipeline, resolve_schema(pipeline), run)
    rows = effective.rows()
    worker = effective.worker
    file = f"file {run.source}"
    rows += [
        ("group_id", worker.group_id, "derived: <deployment>-<pipeline>-scoring"),
        ("transactional_id", transactional_id(worker, 0), "derived: <deployment>-<pipeline>-worker-<slot>"),
        (
            "archive.uri",
            str(run.archive.uri or DataDir.default().archive),
            file if run.archive.uri else "default",
        ),
    ]
    for name, masked in (("MLFLOW_TRACKING_USERNAME", False), ("MLFLOW_TRACKING_PASSWORD", True)):
        if os.environ.get(name):  # the chart's pods log in to MLflow with these (from a Secret)
            value = "*****" if masked else os.environ[name]
            rows.append((f"mlflow.{name.removeprefix('MLFLOW_').lower()}", value, f"env {name}"))
    deployed = run.pipelines.get(pipeline) or run.pipelines.get(pipeline.replace("_", "-"))
    if deployed is not None:
        rows += [(f"pipelines.{pipeline}.{k}", str(v), file) for k, v in vars(deployed).items()]
    if args.json:
        print(json.dumps([{"setting": s, "value": v, "origin": o} for s, v, o in rows], indent=2))
        return 0
    width = max(len(o) for _, _, o in rows)
    for setting, value, origin in rows:
        print(f"{origin.ljust(width)}  {setting}={value}")
    return 0
