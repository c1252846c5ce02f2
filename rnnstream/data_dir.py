"""Where rnnstream keeps its local state: one folder (``$RNNSTREAM_HOME`` or ``./.rnnstream``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "RNNSTREAM_HOME"


@dataclass(frozen=True)
class DataDir:
    """The local data folder and its fixed sub-folders, so every command finds what the others wrote."""

    root: Path

    @classmethod
    def default(cls) -> DataDir:
        """``$RNNSTREAM_HOME`` when set, else ``.rnnstream`` in the current folder."""
        return cls(Path(os.environ.get(ENV_VAR) or ".rnnstream").resolve())

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def archive(self) -> Path:
        """Parquet dataset of events: ``archive/pipeline=<p>/date=<YYYY-MM-DD>/*.parquet``."""
        return self.root / "archive"

    @property
    def checkpoints(self) -> Path:
        """Partition checkpoints: ``checkpoints/<deployment>/<pipeline>/partition=<n>/...``."""
        return self.root / "checkpoints"

    @property
    def mlflow_tracking_uri(self) -> str:
        """Local MLflow store (sqlite); ``MLFLOW_TRACKING_URI`` overrides it where MLflow is used."""
        return f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def ray_train(self) -> Path:
        """Ray Train storage_path for local runs (checkpoints of training runs)."""
        return self.root / "ray-train"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
