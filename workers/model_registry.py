"""Registered rnnstream models in MLflow: log a version, load one (never unpickling), list, promote, rollback.

One registered model per pipeline, ``rnnstream-<pipeline>``. A version is an MLflow ``pyfunc`` logged as code
(:mod:`rnnstream.workers.registry_pyfunc`) with two artifacts: ``weights`` (safetensors + config JSON, written
by :func:`save_model`; the config holds the architecture and the fitted normalization and calibration live in
the weights) and ``meta`` (pipeline, event schema and its version, output names, training data range).

Aliases replace MLflow's deprecated stages: ``champion`` is what serves, ``challenger`` what shadows. Every
move of an alias is remembered in a registered-model tag (``rnnstream.alias_history.<alias>``), so
:func:`rollback` can put the alias back on the version it pointed at before.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before MLflow is imported (as in tracking.py)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import json
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN, EventSchema
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import (
    META_FILE,
    WEIGHTS_FOLDER,
    load_model,
    local_model_version,
    model_folder,
    model_meta,
    save_model,
)
from rnnstream.workers.tracking import TrackingStore, resolve_store

MODEL_NAME_PREFIX = "rnnstream-"
ALIASES: tuple[str, ...] = ("champion", "challenger")
MODELS_URI_SCHEME = "models:/"
WEIGHTS_ARTIFACT = WEIGHTS_FOLDER
META_ARTIFACT = "meta"
_HISTORY_TAG = "rnnstream.alias_history."
_PYFUNC_CODE = Path(__file__).with_name("registry_pyfunc.py")
# Written out so MLflow does not spend seconds inferring them (and record a local "+cpu" torch build).
PIP_REQUIREMENTS: tuple[str, ...] = (
    "torch>=2.4",
    "numpy>=1.26",
    "pyarrow>=25,<27",
    "pandas>=2.2",
    "safetensors>=0.4",
    "mlflow>=3.17,<4",
    "rnnstream",
)


class RegistryError(ValueError):
    """A registry request cannot be done (unknown version, no alias, nothing to roll back); says why."""


def registered_model_name(pipeline: str) -> str:
    """``rnnstream-<pipeline>``."""
    return f"{MODEL_NAME_PREFIX}{pipeline}"


def pipeline_of(model_name: str) -> str:
    return model_name.removeprefix(MODEL_NAME_PREFIX)


# --------------------------------------------------------------------------------------------------- logging
@dataclass(frozen=True)
class LoggedVersion:
    """What :func:`log_model_version` registered: model name, version, and the run that made it."""

    name: str
    version: str
    run_id: str
    model_uri: str


def model_signature(schema: EventSchema, output_names: list[str]) -> ModelSignature:
    """The pyfunc signature: event columns in (key, time, fields), one double column per output out."""
    inputs = [ColSpec(DataType.string, KEY_COLUMN), ColSpec(DataType.datetime, TIME_COLUMN)]
    inputs += [ColSpec(DataType.double, n) for n in schema.numeric]
    inputs += [ColSpec(Array(DataType.float), n) for n, _ in schema.vectors]
    inputs += [ColSpec(DataType.string, n) for n, _ in schema.categorical]
    outputs = [ColSpec(DataType.double, n) for n in output_names]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_model_version(
    model: StreamingModel,
    schema: EventSchema,
    extra_meta: Mapping[str, Any] | None = None,
    register: bool = True,
) -> LoggedVersion:
    """Log ``model`` in the active MLflow run and register it as a new version of ``rnnstream-<pipeline>``.

    The caller opens the run (:func:`rnnstream.workers.tracking.training_run`). ``extra_meta`` (data range,
    metrics, ...) is stored in the version's meta JSON next to the event schema.
    """
    run = mlflow.active_run()
    if run is None:
        raise RegistryError("log_model_version needs an active MLflow run (use tracking.training_run)")
    name = registered_model_name(schema.pipeline)
    meta = {
        "pipeline": schema.pipeline,
        "event_schema": schema.to_dict(),
        "event_schema_version": schema.version,
        "output_names": model.output_names(),
        "model_config": model.config.to_dict(),
        **dict(extra_meta or {}),
    }
    with tempfile.TemporaryDirectory(prefix="rnnstream-model-") as tmp:
        weights_dir = Path(tmp) / WEIGHTS_ARTIFACT
        save_model(model, weights_dir)
        meta_path = Path(tmp) / META_FILE
        meta_path.write_text(json.dumps(meta, indent=2, default=str))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(_PYFUNC_CODE),
                artifacts={WEIGHTS_ARTIFACT: str(weights_dir), META_ARTIFACT: str(meta_path)},
                signature=model_signature(schema, model.output_names()),
                pip_requirements=list(PIP_REQUIREMENTS),
                metadata={
                    "rnnstream_event_schema_version": schema.version,
                    "rnnstream_pipeline": schema.pipeline,
                },
                registered_model_name=name if register else None,
            )
    version = str(info.registered_model_version) if register else ""
    return LoggedVersion(name=name, version=version, run_id=run.info.run_id, model_uri=info.model_uri)


# --------------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedVersion:
    """A model loaded from the registry (or a local folder) with its version string and meta JSON."""

    model: StreamingModel
    version: str
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def event_schema(self) -> EventSchema | None:
        d = self.meta.get("event_schema")
        return EventSchema.from_dict(d) if d else None


def parse_model_uri(source: str, alias: str = "champion") -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` | ``models:/name/3`` | a bare pipeline name -> (model name, alias, version)."""
    if source.startswith(MODELS_URI_SCHEME):
        rest = source[len(MODELS_URI_SCHEME) :].strip("/")
        if "@" in rest:
            name, _, al = rest.partition("@")
            return name, al, None
        name, _, version = rest.partition("/")
        if not version:
            return name, alias, None
        return name, None, version
    if "/" in source or not source:
        raise RegistryError(f"{source!r} is neither a local model folder nor models:/<name>@<alias>")
    return registered_model_name(source), alias, None


def resolve_version(store: TrackingStore, name: str, alias: str | None, version: str | None) -> ModelVersion:
    """The model version an alias or version number names; :class:`RegistryError` when there is none."""
    client = store.client()
    try:
        if version is not None:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias or "champion")
    except MlflowException as exc:
        what = f"version {version}" if version is not None else f"alias @{alias}"
        raise RegistryError(
            f"no {what} of registered model {name!r} in {store.uri} "
            f"(train one with `rnnstream train`, then `rnnstream models promote`)"
        ) from exc


def load_version(
    source: str | Path, alias: str = "champion", store: TrackingStore | None = None
) -> LoadedVersion:
    """Load a model from a local folder or the registry, reading only safetensors and JSON (never a pickle).

    ``source``: a folder (a downloaded MLflow model with ``artifacts/weights``, or a weights folder written
    by ``save_model``), ``models:/rnnstream-<p>@<alias>``, ``models:/rnnstream-<p>/<version>``, or a bare
    pipeline name (meaning its ``alias``, champion by default).
    """
    path = Path(source)
    if path.is_dir():
        return _load_local(path)
    store = store or resolve_store()
    name, al, version = parse_model_uri(str(source), alias)
    mv = resolve_version(store, name, al, version)
    # Only the model's own artifacts (weights + meta JSON), not its code or environment files.
    download_uri = store.client().get_model_version_download_uri(name, mv.version).rstrip("/") + "/artifacts"
    with tempfile.TemporaryDirectory(prefix="rnnstream-load-") as tmp:
        fetched = mlflow.artifacts.download_artifacts(
            artifact_uri=download_uri, dst_path=tmp, tracking_uri=store.uri
        )
        local = Path(fetched)
        loaded = _load_local(local)
    return LoadedVersion(model=loaded.model, version=str(mv.version), name=name, meta=loaded.meta)


def load_model_version(
    pipeline_or_uri: str | Path, alias: str = "champion", store: TrackingStore | None = None
) -> tuple[StreamingModel, str]:
    """The serving loader: ``(model in eval mode, version string)``; see :func:`load_version` for ``source``.

    A local folder gets the version ``local:<folder name>@<content digest>`` unless its meta JSON names one.
    """
    loaded = load_version(pipeline_or_uri, alias=alias, store=store)
    return loaded.model, loaded.version


def _load_local(path: Path) -> LoadedVersion:
    meta = model_meta(path)
    model = load_model(model_folder(path))
    model.eval()
    version = local_model_version(path, meta.get("version"))
    return LoadedVersion(model=model, version=version, name=str(meta.get("pipeline", "")), meta=meta)


# ------------------------------------------------------------------------------------------- listing, aliases
@dataclass(frozen=True)
class VersionInfo:
    """One registered version as listed and reviewed."""

    name: str
    version: str
    run_id: str
    created_ms: int
    aliases: tuple[str, ...]

    @property
    def pipeline(self) -> str:
        return pipeline_of(self.name)


def list_versions(store: TrackingStore, pipeline: str | None = None) -> list[VersionInfo]:
    """Registered versions of one pipeline (or of every ``rnnstream-*`` model), oldest first."""
    client = store.client()
    if pipeline:
        names = [registered_model_name(pipeline)]
    else:
        names = sorted(m.name for m in client.search_registered_models(f"name LIKE '{MODEL_NAME_PREFIX}%'"))
    out: list[VersionInfo] = []
    for name in names:
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            continue
        # search_model_versions leaves aliases empty here; the registered model's alias map is reliable.
        by_version: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{name}'"):
            out.append(
                VersionInfo(
                    name=name,
                    version=str(mv.version),
                    run_id=mv.run_id or "",
                    created_ms=int(mv.creation_timestamp or 0),
                    aliases=tuple(sorted(by_version.get(str(mv.version), []))),
                )
            )
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def alias_version(store: TrackingStore, pipeline: str, alias: str = "champion") -> str | None:
    """The version ``alias`` points at, or None."""
    try:
        return str(store.client().get_model_version_by_alias(registered_model_name(pipeline), alias).version)
    except MlflowException:
        return None


def alias_history(store: TrackingStore, pipeline: str, alias: str = "champion") -> list[str]:
    """Versions ``alias`` pointed at, oldest first, ending with the current one."""
    registered = store.client().get_registered_model(registered_model_name(pipeline))
    return json.loads(registered.tags.get(_HISTORY_TAG + alias, "[]"))


def promote(store: TrackingStore, pipeline: str, version: str, alias: str = "champion") -> str | None:
    """Point ``alias`` at ``version`` (which must exist); returns the version it pointed at before."""
    if alias not in ALIASES:
        raise RegistryError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    name = registered_model_name(pipeline)
    resolve_version(store, name, None, str(version))
    previous = alias_version(store, pipeline, alias)
    history = alias_history(store, pipeline, alias)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)
    if not history or history[-1] != str(version):
        history.append(str(version))
    client = store.client()
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, _HISTORY_TAG + alias, json.dumps(history))
    return previous


def rollback(store: TrackingStore, pipeline: str, alias: str = "champion") -> tuple[str, str]:
    """Move ``alias`` back to the version it pointed at before the last promotion: (from, to)."""
    name = registered_model_name(pipeline)
    try:
        history = alias_history(store, pipeline, alias)
    except MlflowException as exc:
        raise RegistryError(f"no registered model {name!r} in {store.uri}") from exc
    current = alias_version(store, pipeline, alias)
    if current is None:
        raise RegistryError(f"{name} has no @{alias} to roll back (promote a version first)")
    while history and history[-1] != current:
        history.pop()  # the alias was moved outside rnnstream: trust the registry's current value
    if len(history) < 2:
        raise RegistryError(f"{name}@{alias} = version {current} has no earlier version to roll back to")
    history.pop()
    target = history[-1]
    client = store.client()
    client.set_registered_model_alias(name, alias, target)
    client.set_registered_model_tag(name, _HISTORY_TAG + alias, json.dumps(history))
    return current, target


# ------------------------------------------------------------------------------------------ live metrics
def log_version_metrics(
    store: TrackingStore,
    pipeline: str,
    version: str,
    metrics: Mapping[str, float],
    prefix: str = "live.",
    step: int | None = None,
) -> None:
    """Log ``metrics`` (e.g. a shadow challenger's live scores) onto the training run of a version.

    They appear in MLflow beside the version's evaluation metrics, as ``<prefix><name>``.
    """
    mv = resolve_version(store, registered_model_name(pipeline), None, str(version))
    if not mv.run_id:
        raise RegistryError(f"{mv.name} version {version} has no MLflow run to log metrics to")
    client = store.client()
    now_ms = int(time.time() * 1000)
    for name, value in metrics.items():
        client.log_metric(mv.run_id, f"{prefix}{name}", float(value), timestamp=now_ms, step=step or 0)


def record_swap(
    store: TrackingStore, pipeline: str, old_version: str | None, new_version: str, details: Mapping[str, Any]
) -> None:
    """Note on the new version (tag ``rnnstream.swapped_in``) when and how serving switched to it."""
    name = registered_model_name(pipeline)
    doc = {"from": old_version, "to": str(new_version), **dict(details)}
    store.client().set_model_version_tag(name, str(new_version), "rnnstream.swapped_in", json.dumps(doc))
