"""Where MLflow runs and models live, and how a training run is written there.

The tracking URI is, first match wins: an explicit value (a config file or ``--tracking-uri``), the
``MLFLOW_TRACKING_URI`` environment variable, then the local sqlite store under the project's data dir
(``<data>/mlflow/mlflow.db`` with artifacts in ``<data>/mlflow/artifacts``). In a cluster the environment
variable points at an MLflow server backed by PostgreSQL and S3. MLflow's telemetry is switched off
(``MLFLOW_DISABLE_TELEMETRY=true``), as are download progress bars, before MLflow is imported, unless the
caller set them otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from rnnstream.data_dir import DataDir

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_PREFIX = "rnnstream-"
_MAX_PARAM_LENGTH = 6000


@dataclass(frozen=True)
class TrackingStore:
    """A resolved MLflow location: the tracking (and registry) URI, and where new experiments keep artifacts.

    ``artifact_root`` is set only for the local sqlite default; a server decides its own artifact store.
    """

    uri: str
    artifact_root: Path | None = None

    def _prepare(self) -> None:
        if self.artifact_root is not None:
            self.artifact_root.mkdir(parents=True, exist_ok=True)  # the sqlite file sits beside it

    @property
    def is_local(self) -> bool:
        return self.artifact_root is not None

    def client(self) -> MlflowClient:
        """A client bound to this store (tracking and model registry)."""
        self._prepare()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def activate(self) -> None:
        """Point the ``mlflow`` fluent API (``start_run``, ``log_model``) at this store."""
        self._prepare()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)


def resolve_store(data_dir: DataDir | None = None, uri: str | None = None) -> TrackingStore:
    """The store to use: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else sqlite under ``data_dir``."""
    chosen = uri or os.environ.get(TRACKING_URI_ENV)
    if chosen:
        return TrackingStore(uri=chosen)
    data_dir = data_dir or DataDir.default()
    return TrackingStore(uri=data_dir.mlflow_tracking_uri, artifact_root=data_dir.mlflow_artifacts)


def experiment_name(pipeline: str) -> str:
    """One MLflow experiment per pipeline: ``rnnstream-<pipeline>``."""
    return f"{EXPERIMENT_PREFIX}{pipeline}"


def ensure_experiment(store: TrackingStore, name: str) -> str:
    """The id of experiment ``name``, created (with artifacts under the local artifact root) when missing."""
    client = store.client()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (store.artifact_root / name).as_uri() if store.artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


def git_commit(repo: Path | None = None) -> str:
    """The commit the code runs from (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` strings as MLflow params (lists as JSON, long values cut)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_MAX_PARAM_LENGTH]
    return out


@contextmanager
def training_run(
    store: TrackingStore, pipeline: str, run_name: str, tags: Mapping[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in the pipeline's experiment, tagged with the git commit and the pipeline name."""
    store.activate()
    experiment_id = ensure_experiment(store, experiment_name(pipeline))
    all_tags = {"rnnstream.pipeline": pipeline, "mlflow.source.git.commit": git_commit(), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        yield run


_NOT_EPOCH_METRICS = frozenset({"epoch", "resumed", "workers"})


def log_epoch_history(history: list[Mapping[str, float]]) -> None:
    """One MLflow metric point per epoch and measure (``step`` = epoch number) in the active run."""
    for epoch, row in enumerate(history):
        metrics = {k: float(v) for k, v in row.items() if k not in _NOT_EPOCH_METRICS}
        mlflow.log_metrics(metrics, step=int(row.get("epoch", epoch)))
