"""``rnnstream serve | scale | status``: run a pipeline's scoring workers, change their number, show metrics.

``serve`` starts (or joins) Ray, the pipeline's coordinator and N scoring workers, prints a live one-line
status, and on Ctrl-C (or SIGTERM, or after ``--duration``) stops cleanly: every worker commits and writes a
final checkpoint of its partitions. It records where its Ray runs in ``<data dir>/serving/<pipeline>.json``
(``<deployment>.<pipeline>.json`` for a release other than the default) so ``scale`` and ``status`` (other
processes) find the coordinator of that release.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rnnstream.cli.topics import add_kafka_args, check_reachable
from rnnstream.serving_config import add_serving_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="score a pipeline's events with N workers until Ctrl-C")
    s.add_argument("--pipeline", required=True)
    s.add_argument(
        "--model",
        default=None,
        help="a model folder or models:/<name>@<alias> (or /<version>); default: the config's "
        "pipelines.<pipeline>.model_uri",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="scoring workers (default: the config's pipelines.<pipeline>.workers, else 2)",
    )
    s.add_argument(
        "--checkpoint-uri", default=None, help="pyarrow.fs location (default <data dir>/checkpoints)"
    )
    s.add_argument(
        "--config",
        default=None,
        help="the run-config file (serving:, kafka:, mlflow: sections; default $RNNSTREAM_CONFIG)",
    )
    s.add_argument(
        "--deployment-name",
        default=None,
        help="release name carried by the consumer group, transactional ids, checkpoints and output topics "
        "(<pipeline>.<name>.scores/.dlq unless the name is rnnstream), so two releases on one Kafka never "
        "collide (default $RNNSTREAM_DEPLOYMENT_NAME, else rnnstream)",
    )
    s.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or local)")
    s.add_argument("--no-transactions", action="store_true", help="at-least-once scores (no Kafka txns)")
    s.add_argument("--follow-alias", action="store_true", help="poll the model alias and hot-swap on change")
    s.add_argument(
        "--probe-every-s", type=float, default=10.0, help="alias poll period (default %(default)s)"
    )
    s.add_argument("--warmup-events", type=int, default=10_000, help="challenger warm-up events per worker")
    s.add_argument("--shadow", action="store_true", help="warm-up scores go to <pipeline>.scores.shadow too")
    s.add_argument(
        "--shadow-model",
        default=None,
        help="also score this model (folder or models:/<name>@challenger) into <pipeline>.scores.shadow",
    )
    s.add_argument("--duration", type=float, default=None, help="stop cleanly after this many seconds")
    s.add_argument("--status-every", type=float, default=1.0, help="seconds between status lines")
    add_kafka_args(s)
    add_serving_flags(s)
    s.set_defaults(func=run_serve)

    c = subparsers.add_parser("scale", help="change the number of workers of a running pipeline")
    c.add_argument("--pipeline", required=True)
    c.add_argument("--workers", type=int, required=True)
    c.add_argument("--ray-address", default=None)
    _add_release_flag(c)
    c.set_defaults(func=run_scale)

    t = subparsers.add_parser("status", help="per-worker metrics of a running pipeline")
    t.add_argument("--pipeline", required=True)
    t.add_argument("--ray-address", default=None)
    t.add_argument("--json", action="store_true", help="print the raw status as JSON")
    _add_release_flag(t)
    t.set_defaults(func=run_status)


# --------------------------------------------------------------------------------------------------- helpers
def _add_release_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deployment-name",
        default=None,
        help="the release, as given to `serve` (default $RNNSTREAM_DEPLOYMENT_NAME, else rnnstream)",
    )


def _release(args: argparse.Namespace) -> str:
    from rnnstream.serving_config import DEPLOYMENT_ENV
    from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT

    return args.deployment_name or os.environ.get(DEPLOYMENT_ENV) or DEFAULT_DEPLOYMENT


def _address_file(pipeline: str, deployment: str) -> Path:
    """Where ``serve`` notes its Ray: ``serving/<pipeline>.json`` for the default release, else
    ``serving/<deployment>.<pipeline>.json``."""
    from rnnstream.data_dir import DataDir
    from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT

    name = pipeline if deployment == DEFAULT_DEPLOYMENT else f"{deployment}.{pipeline}"
    return DataDir.default().root / "serving" / f"{name}.json"


def _connect(pipeline: str, address: str | None, deployment: str) -> Any:
    """Join the Ray that serves release ``deployment`` of ``pipeline`` and return its coordinator
    (UsageError when none runs)."""
    from rnnstream.errors import UsageError
    from rnnstream.workers.serving import find_coordinator, init_ray

    if address is None and not os.environ.get("RAY_ADDRESS"):
        f = _address_file(pipeline, deployment)
        if f.is_file():
            address = json.loads(f.read_text()).get("ray_address")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        raise UsageError(
            f"no `rnnstream serve --pipeline {pipeline} --deployment-name {deployment}` is running here "
            "(pass --ray-address)"
        )
    try:
        init_ray(address=address)
        return find_coordinator(pipeline, deployment)
    except (ValueError, ConnectionError) as exc:
        raise UsageError(str(exc)) from exc


def serving_from_args(args: argparse.Namespace, pipeline: str, schema: Any, run: Any) -> Any:
    """The :class:`EffectiveServing` of ``pipeline`` (events of ``schema``) from the run config ``run`` and
    the serve flags in ``args`` (those a command lacks count as not given); ``serve`` and ``config show``
    share it."""
    from rnnstream.data_dir import DataDir
    from rnnstream.serving_config import effective_serving, serving_flags
    from rnnstream.workers.kafka_settings import KafkaSettings

    if args.kafka_config:  # a separate Kafka client file replaces the run config's kafka: section
        run = replace(run, kafka=KafkaSettings.load(config_file=args.kafka_config))
    return effective_serving(
        pipeline,
        schema,
        run,
        flags={
            "checkpoint_uri": args.checkpoint_uri,
            "deployment": args.deployment_name,
            "transactions": False if getattr(args, "no_transactions", False) else None,
            "bootstrap_servers": args.bootstrap_servers,
            "model": getattr(args, "model", None),
            "workers": getattr(args, "workers", None),
            **serving_flags(args),
        },
        default_checkpoint_uri=str(DataDir.default().checkpoints),
    )


# ------------------------------------------------------------------------------------------------- commands
def run_serve(args: argparse.Namespace) -> int:
    import ray

    from rnnstream.errors import UsageError
    from rnnstream.pipelines.sample_stream import resolve_schema
    from rnnstream.run_config import load_run_config
    from rnnstream.workers.kafka_io import TopicAdmin
    from rnnstream.workers.scoring_partition import feature_mismatch
    from rnnstream.workers.serving import (
        AliasProbe,
        init_ray,
        load_model,
        resolve_model,
    )

    schema = resolve_schema(args.pipeline)
    effective = serving_from_args(args, args.pipeline, schema, load_run_config(args.config))
    if effective.workers < 1:
        raise UsageError("--workers must be >= 1")
    if effective.model is None:
        raise UsageError(f"pass --model, or list {args.pipeline} under `pipelines` in the run config")
    args.model, args.workers = effective.model, effective.workers  # from the file when not given
    config = effective.worker
    settings = config.kafka
    check_reachable(settings)
    if effective.tracking_uri:  # models:/ URIs resolve there, here and in every worker Ray starts
        os.environ["MLFLOW_TRACKING_URI"] = effective.tracking_uri
    with TopicAdmin(settings, check=False) as admin:
        partitions = admin.partitions(config.events_topic)
        if partitions is None:
            raise UsageError(
                f"topic {config.events_topic} does not exist: run `rnnstream topics create --pipeline "
                f"{args.pipeline} --partitions N` first"
            )
        admin.create_topics([config.scores_topic, config.dlq_topic, config.shadow_topic], partitions)
    try:
        handle = resolve_model(args.model)
        features = load_model(handle.locator).config.features
    except Exception as exc:
        raise UsageError(f"cannot use --model {args.model}: {exc}") from exc
    problem = feature_mismatch(features, schema)
    if problem:
        raise UsageError(
            f"--model {args.model} cannot serve pipeline {args.pipeline}: {problem}; pass a model trained "
            f"for {args.pipeline} (rnnstream train --pipeline {args.pipeline})"
        )
    init_ray(address=args.ray_address)
    address_file = _address_file(args.pipeline, config.deployment)
    address_file.parent.mkdir(parents=True, exist_ok=True)
    address_file.write_text(json.dumps({"ray_address": ray.get_runtime_context().gcs_address}))
    probe = AliasProbe(args.model) if args.follow_alias else None
    # a SIGTERM from here on stops cleanly, also one that comes while the workers start (a pod deleted then;
    # a test that saw the first scores): the handler is in place before anything is scored
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _serve_until_stopped(args, config, handle, partitions, probe, address_file, stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _serve_until_stopped(
    args: argparse.Namespace,
    config: Any,
    handle: Any,
    partitions: int,
    probe: Any,
    address_file: Path,
    stop: threading.Event,
) -> None:
    """Start the coordinator, show its status line until ``stop`` (SIGTERM), Ctrl-C or ``--duration``,
    then stop it cleanly (commits and final checkpoints)."""
    import ray

    from rnnstream.errors import UsageError
    from rnnstream.workers.serving import resolve_model, start_coordinator, status_line, stop_coordinator

    coord = start_coordinator(
        config,
        handle,
        args.workers,
        partitions,
        model_probe=probe,
        probe_every_s=args.probe_every_s,
        warmup_events=args.warmup_events,
        shadow=args.shadow,
    )
    if args.shadow_model:
        try:
            shadow_handle = resolve_model(args.shadow_model, alias="challenger")
        except Exception as exc:
            stop_coordinator(coord)
            raise UsageError(f"cannot use --shadow-model {args.shadow_model}: {exc}") from exc
        ray.get(coord.shadow_model.remote(shadow_handle), timeout=300)
        print(f"shadow-scoring {shadow_handle.version} into {config.shadow_topic}", flush=True)
    print(
        f"serving {args.pipeline} ({config.deployment}) with {args.workers} workers over {partitions} "
        f"partitions, model {handle.version}, scores into {config.scores_topic} (rejects into "
        f"{config.dlq_topic}), checkpoints in {config.checkpoint_uri} (Ctrl-C stops cleanly)",
        flush=True,
    )
    started = time.monotonic()
    tty = sys.stdout.isatty()
    try:
        while True:  # at least one status line, also when a SIGTERM came while it started
            stop.wait(args.status_every)
            try:
                line = status_line(ray.get(coord.status.remote(), timeout=30))
            except Exception as exc:  # a status that times out is shown, not fatal
                line = f"status unavailable: {type(exc).__name__}"
            print(("\r" + line.ljust(120)) if tty else line, end="" if tty else "\n", flush=True)
            if stop.is_set() or (args.duration is not None and time.monotonic() - started >= args.duration):
                break
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping: committing and writing final checkpoints ...", flush=True)
        offsets = stop_coordinator(coord)
        address_file.unlink(missing_ok=True)
        print(f"stopped; next offsets per partition: {dict(sorted(offsets.items()))}", flush=True)


def run_scale(args: argparse.Namespace) -> int:
    from rnnstream.errors import UsageError

    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    coord = _connect(args.pipeline, args.ray_address, _release(args))  # imports Ray (after its auth mode)
    import ray

    try:
        assignment = ray.get(coord.scale.remote(args.workers), timeout=600)
    except ray.exceptions.RayTaskError as exc:  # the coordinator's refusal (e.g. not ready yet), one line
        from rnnstream.workers.model_swap import one_line

        raise UsageError(f"{args.pipeline}: scale refused: {one_line(exc)}") from None
    print(f"{args.pipeline}: {len(assignment)} workers; partitions {dict(sorted(assignment.items()))}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rnnstream.workers.serving import status_table

    coord = _connect(args.pipeline, args.ray_address, _release(args))  # imports Ray (after its auth mode)
    import ray

    status = ray.get(coord.status.remote(), timeout=60)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(status_table(status))
    return 0
