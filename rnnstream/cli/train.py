"""``rnnstream train``: train a pipeline's model with Ray Train, track and register it in MLflow.

Reads the pipeline's archived events (or ``--data``, or a ``--generate``-d stream), holds out the latest
part of the time range, trains on ``--workers`` Ray Train workers (DDP; ``--use-gpu`` for one GPU each),
evaluates through the streaming path against a stateless baseline, and registers a new model version.
``--resume`` continues the pipeline's latest (or a named) training run from its last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rnnstream.data_dir import DataDir
from rnnstream.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a pipeline's model with Ray Train and register it in MLflow"
    )
    parser.add_argument(
        "--pipeline", required=True, help="fraud, monitoring-metrics, monitoring-logs or video"
    )
    parser.add_argument(
        "--data", default=None, help="Parquet dataset, local or s3://... (default: the local archive)"
    )
    parser.add_argument(
        "--generate", type=int, default=0, metavar="N", help="train on N events from the pipeline's generator"
    )
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers (default 2)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the pipeline's)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML/JSON with model:, training:, tracking_uri: (the deployment's run config, "
        "$RNNSTREAM_CONFIG, gives the MLflow server and the archive to train on)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN",
        help="continue the latest (or the named) training run from its last checkpoint",
    )
    parser.add_argument(
        "--holdout", type=float, default=None, help="held-out fraction of the time range (0.2)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (0)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the stateless baseline")
    parser.add_argument("--no-register", action="store_true", help="log the model but register no version")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or local)"
    )
    parser.add_argument(
        "--storage-path",
        default=None,
        help="Ray Train storage (folder or s3://...; default <data>/ray-train); every node must reach it",
    )
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from rnnstream.jobs import training as training_run
    from rnnstream.pipelines.spec import get_pipeline
    from rnnstream.run_config import load_run_config

    spec = get_pipeline(args.pipeline)
    doc = training_run.load_config_file(args.config) if args.config else {}
    deployment = load_run_config()  # $RNNSTREAM_CONFIG: its mlflow: and archive: sections apply here
    training = dict(doc.get("training") or {})
    cli = {
        "epochs": args.epochs,
        "workers": args.workers,
        "holdout_fraction": args.holdout,
        "seed": args.seed,
        "use_gpu": True if args.use_gpu else None,
        "baseline": False if args.no_baseline else None,
    }
    training.update({k: v for k, v in cli.items() if v is not None})
    settings = training_run.default_settings(spec, **training)
    if settings.use_gpu:
        _require_gpus(settings.workers)
    if args.data is not None and args.generate:
        raise UsageError("give either --data or --generate, not both")
    request = training_run.TrainRequest(
        pipeline=spec.name,
        settings=settings,
        data=args.data if args.data is not None or args.generate else deployment.archive.uri,
        generate=args.generate,
        model_overrides=dict(doc.get("model") or {}),
        resume=args.resume,
        tracking_uri=args.tracking_uri or doc.get("tracking_uri") or deployment.tracking_uri(),
        register=not args.no_register,
        storage=args.storage_path,
    )
    report = training_run.run_training(spec, request, DataDir.default())
    version = f", version {report.version}" if report.version else ""
    print(f"run {report.run_name}: mlflow run {report.run_id}{version}")
    return 0


GPU_WAIT_ENV = "RNNSTREAM_GPU_WAIT_S"


def _require_gpus(workers: int) -> None:
    """Fail early, in one line, when ``--use-gpu`` cannot get a GPU.

    Locally (no RAY_ADDRESS): fewer CUDA devices than workers is an error at once. On a cluster a GPU node
    may still be coming (the autoscaler adds one for the pending workers), so the cluster is given
    ``$RNNSTREAM_GPU_WAIT_S`` seconds (default 600) to show one GPU before the job gives up.
    """
    import os
    import time

    address = os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        from rnnstream.workers.serving import init_ray

        wait_s = float(os.environ.get(GPU_WAIT_ENV, "600"))
        init_ray(address=address)
        deadline = time.monotonic() + wait_s
        while ray.cluster_resources().get("GPU", 0) < 1:
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"--use-gpu needs a GPU and the Ray cluster at {address} showed none in {wait_s:.0f} s "
                    f"(${GPU_WAIT_ENV}): add a GPU worker group or drop --use-gpu"
                )
            time.sleep(5)  # polling the cluster's resources while an autoscaler may add a GPU node
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        raise UsageError("--use-gpu needs a CUDA GPU and this machine has none: drop --use-gpu")
    if have < workers:
        raise UsageError(
            f"--use-gpu needs {workers} GPU(s), this machine has {have}: "
            f"drop --use-gpu or pass --workers {max(have, 1)}"
        )
