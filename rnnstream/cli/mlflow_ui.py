"""``rnnstream mlflow ui``: the MLflow UI on the project's tracking store, started lean.

Lean means one web worker and no job-execution processes (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``):
MLflow's defaults start about 15 processes and ~3 GB; this starts one in ~15 s. The store is the one every
other command uses (``MLFLOW_TRACKING_URI`` or the sqlite file under the data dir).
"""

from __future__ import annotations

import argparse
import os
import sys

from rnnstream.data_dir import DataDir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("mlflow", help="MLflow tools on the project's tracking store")
    sub = parser.add_subparsers(dest="mlflow_command", metavar="SUBCOMMAND", required=True)
    ui = sub.add_parser(
        "ui", help="start the MLflow UI (one worker) on the local sqlite store or $MLFLOW_TRACKING_URI"
    )
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument(
        "--tracking-uri", default=None, help="store to show (default: $MLFLOW_TRACKING_URI or local)"
    )
    ui.add_argument(
        "--print-command", action="store_true", help="print the server command instead of running it"
    )
    ui.set_defaults(func=run_ui)


def server_command(uri: str, artifact_root: str | None, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line for a lean single-worker UI."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    return [*cmd, "--host", host, "--port", str(port), "--workers", "1"]


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def run_ui(args: argparse.Namespace) -> int:
    from rnnstream.workers.tracking import resolve_store

    store = resolve_store(DataDir.default(), args.tracking_uri)
    root = store.artifact_root.as_uri() if store.artifact_root is not None else None
    cmd = server_command(store.uri, root, args.host, args.port)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port} (store {store.uri}); Ctrl-C stops it", flush=True)
    # Become the server (exec), so Ctrl-C and SIGTERM reach it directly and nothing is left orphaned.
    os.execve(cmd[0], cmd, server_environment())
    return 0  # not reached
