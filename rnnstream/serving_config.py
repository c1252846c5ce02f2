"""The effective serving settings of a pipeline, and where each value came from.

One function, :func:`effective_serving`, builds the :class:`WorkerConfig` a ``serve`` job runs with, from
(later wins) the pipeline's own defaults (:class:`ServingDefaults`), the run-config file (its ``serving:``,
``kafka:`` and ``mlflow:`` sections), the environment (``RNNSTREAM_KAFKA_*``, ``RNNSTREAM_DEPLOYMENT_NAME``,
``RNNSTREAM_CHECKPOINT_URI``, ``MLFLOW_TRACKING_URI``) and the command-line flags. Every setting has one name
everywhere (file key, flag ``--name-with-dashes``, chart value, ``WorkerConfig`` field). The origin of each
value is kept, so ``rnnstream config show`` can say, like ``git config --show-origin``, why a pod runs with
what it runs with.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.workers.kafka_settings import ENV_PREFIX, SECRET_FIELDS, KafkaSettings
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT, WorkerConfig

if TYPE_CHECKING:  # run_config loads pydantic: not for building the CLI's parser
    from rnnstream.run_config import RunConfig

SERVING_SETTINGS = (
    "max_batch_events",
    "batch_linger_ms",
    "commit_interval_ms",
    "key_ttl_seconds",
    "checkpoint_interval_events",
    "checkpoint_interval_seconds",
    "warmup_archive_events",
    "metrics_port",
    "max_record_bytes",
)
# The flag of each serving setting: its type and what it does (the file key is the setting's name).
_SERVING_FLAG_HELP: dict[str, tuple[type, str]] = {
    "max_batch_events": (int, "messages a worker polls into one micro-batch; events it scores in one call"),
    "batch_linger_ms": (int, "how long a worker waits to fill a micro-batch"),
    "commit_interval_ms": (int, "longest a score waits for its commit when behind (at once when keeping up)"),
    "key_ttl_seconds": (float, "event time a key may be idle before its state is dropped"),
    "checkpoint_interval_events": (int, "checkpoint a partition after this many events ..."),
    "checkpoint_interval_seconds": (float, "... or after this many seconds"),
    "warmup_archive_events": (int, "a hot-swap challenger warms each key from this many archived events"),
    "metrics_port": (int, "per-partition Prometheus series on this port + the worker's slot (0: any free)"),
    "max_record_bytes": (int, "largest score or dead-letter record written (under the topics' limit)"),
}
DEFAULT_WORKERS = 2
DEPLOYMENT_ENV = "RNNSTREAM_DEPLOYMENT_NAME"
CHECKPOINT_ENV = "RNNSTREAM_CHECKPOINT_URI"


def add_serving_flags(parser: argparse.ArgumentParser) -> None:
    """``--name-with-dashes`` for every serving setting (default: the file, then the pipeline's default)."""
    for name in SERVING_SETTINGS:
        kind, text = _SERVING_FLAG_HELP[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{text} (serving.{name})"
        )


def serving_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The serving settings given on the command line (None: not given; flags a command lacks too)."""
    return {name: getattr(args, name, None) for name in SERVING_SETTINGS}


@dataclass(frozen=True)
class EffectiveServing:
    """The worker configuration, the MLflow URI, the model and number of workers (None: no model named
    anywhere), and the origin of every value (setting -> source)."""

    worker: WorkerConfig
    tracking_uri: str | None
    origins: Mapping[str, str]
    model: str | None = None
    workers: int = DEFAULT_WORKERS

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, value, origin) for display; secrets masked."""
        out: list[tuple[str, str, str]] = []
        values = {
            f.name: getattr(self.worker, f.name) for f in fields(WorkerConfig) if f.name in self.origins
        }
        for name, value in values.items():
            out.append((name, str(value), self.origins[name]))
        for f in fields(KafkaSettings):
            key = f"kafka.{f.name}"
            if key in self.origins:
                value = getattr(self.worker.kafka, f.name)
                shown = "*****" if f.name in SECRET_FIELDS and value else str(value)
                out.append((key, shown, self.origins[key]))
        out.append(
            ("mlflow.tracking_uri", str(self.tracking_uri), self.origins.get("mlflow.tracking_uri", "-"))
        )
        out.append(("model", str(self.model), self.origins.get("model", "-")))
        out.append(("workers", str(self.workers), self.origins.get("workers", "-")))
        return out


def effective_serving(
    pipeline: str,
    schema: EventSchema,
    run: RunConfig,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    default_checkpoint_uri: str,
) -> EffectiveServing:
    """The settings ``serve --pipeline pipeline`` runs with (see the module doc for the precedence).

    ``flags``: the command line's values by setting name (None: not given) among ``checkpoint_uri``,
    ``deployment``, ``transactions``, ``bootstrap_servers``, ``tracking_uri``, ``model``, ``workers`` and
    the serving settings (:data:`SERVING_SETTINGS`). The file's ``pipelines.<pipeline>`` entry gives the
    model and the number of workers when the flags do not.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}

    def put(name: str, value: Any, origin: str) -> None:
        if value is not None:
            values[name] = value
            origins[name] = origin

    defaults = _pipeline_defaults(pipeline)
    base = WorkerConfig(pipeline=pipeline, schema=schema, kafka=KafkaSettings(), checkpoint_uri="")
    for name in SERVING_SETTINGS:
        put(name, getattr(base, name), "default")
        if defaults is not None:
            put(name, getattr(defaults, name, None), f"pipeline {pipeline} default")
    put("deployment", DEFAULT_DEPLOYMENT, "default")
    put("checkpoint_uri", default_checkpoint_uri, "default")
    put("transactions", True, "default")
    file = f"file {run.source}"
    for name in SERVING_SETTINGS:
        put(name, getattr(run.serving, name), file)
    put("checkpoint_uri", run.serving.checkpoint_uri, file)
    put("warmup_archive_uri", run.archive.uri, f"{file} (archive.uri)")  # hot swaps warm keys from it
    put("deployment", env.get(DEPLOYMENT_ENV), f"env {DEPLOYMENT_ENV}")
    put("checkpoint_uri", env.get(CHECKPOINT_ENV), f"env {CHECKPOINT_ENV}")
    for name, value in flags.items():
        if name not in ("bootstrap_servers", "tracking_uri", "model", "workers"):
            put(name, value, f"flag --{_FLAG_OF.get(name, name).replace('_', '-')}")
    kafka = run.kafka
    if "bootstrap_servers" in flags:
        kafka = replace(kafka, bootstrap_servers=flags["bootstrap_servers"])
    for f in fields(KafkaSettings):
        if f.name == "extra":
            continue
        if f.name == "bootstrap_servers" and "bootstrap_servers" in flags:
            origins["kafka.bootstrap_servers"] = "flag --bootstrap-servers"
        elif ENV_PREFIX + f.name.upper() in env:
            origins[f"kafka.{f.name}"] = f"env {ENV_PREFIX}{f.name.upper()}"
        elif getattr(kafka, f.name) != getattr(KafkaSettings(), f.name):
            origins[f"kafka.{f.name}"] = file
        elif f.name == "bootstrap_servers":
            origins[f"kafka.{f.name}"] = "default"
    tracking = flags.get("tracking_uri") or env.get("MLFLOW_TRACKING_URI") or run.mlflow.tracking_uri
    if flags.get("tracking_uri"):
        origins["mlflow.tracking_uri"] = "flag --tracking-uri"
    elif env.get("MLFLOW_TRACKING_URI"):
        origins["mlflow.tracking_uri"] = "env MLFLOW_TRACKING_URI"
    elif run.mlflow.tracking_uri:
        origins["mlflow.tracking_uri"] = file
    else:
        origins["mlflow.tracking_uri"] = "default (local store)"
    deployed = run.pipelines.get(pipeline) or run.pipelines.get(pipeline.replace("_", "-"))
    model, workers = (deployed.model_uri, deployed.workers) if deployed else (None, DEFAULT_WORKERS)
    origins["model"] = origins["workers"] = f"{file} (pipelines.{pipeline})" if deployed else "default"
    for name in ("model", "workers"):
        if name in flags:
            origins[name] = f"flag --{name}"
    model, workers = flags.get("model", model), flags.get("workers", workers)
    _check_deployment_name(values["deployment"], origins["deployment"])
    worker = WorkerConfig(pipeline=pipeline, schema=schema, kafka=kafka, **values)
    return EffectiveServing(worker, tracking, origins, model, workers)


# Settings whose flag is not their own name.
_FLAG_OF = {"deployment": "deployment_name"}
# A release name goes into topic names (``<pipeline>.<release>.scores``), the consumer group, transactional
# ids, Ray actor names and checkpoint paths: a DNS label (as a Helm release without dots) fits all of them.
_DEPLOYMENT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?")


def _check_deployment_name(name: str, origin: str) -> None:
    """Refuse, in one line, a release name that cannot name topics, groups and actors apart."""
    if not _DEPLOYMENT_NAME.fullmatch(name):
        raise ConfigError(
            f"deployment name {name!r} ({origin}) must be lowercase letters, digits and '-', starting and "
            "ending with a letter or digit, at most 53 characters (e.g. the Helm release name)"
        )


def _pipeline_defaults(pipeline: str) -> Any:
    """The registered pipeline's :class:`ServingDefaults`, or None for a pipeline of one's own schema."""
    from rnnstream.pipelines.spec import get_pipeline

    try:
        return get_pipeline(pipeline).serving
    except ConfigError:
        return None
