"""A model fitted on a file (:class:`FittedFileModel`): its summary, and where it is kept: a folder
(``fit-file --model-out``) or a version in the MLflow registry (``--register``), and loading it back for
``score-file`` from either.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rnnstream.errors import UsageError
from rnnstream.files.schema import FileSchema
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import load_model, save_model

META_FILE_SCHEMA = "file_schema"  # the registry meta key holding the file schema


@dataclass
class FittedFileModel:
    """A model fitted on a file, with the schema to read files for it and what training did."""

    model: StreamingModel
    schema: FileSchema
    events: int
    keys: int
    train_events: int
    holdout_events: int
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    seconds: float
    holdout_metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        cfg = self.model.config
        lines = [
            f"fitted a {cfg.head} model ({cfg.cell.upper()}, {cfg.num_layers} layer(s), "
            f"hidden {cfg.hidden_size}) on {self.events:,} events of {self.keys:,} keys "
            f"in {self.seconds:.1f} s",
            f"  training events {self.train_events:,}, held-out events {self.holdout_events:,}; "
            f"best epoch {self.best_epoch + 1} of {len(self.history)}"
            + (" (stopped early)" if self.stopped_early else ""),
        ]
        if self.schema.head == "binary":
            lines.append(f"  positive class: {self.schema.classes[1]!r} (score = its probability)")
        elif self.schema.head == "multiclass":
            lines.append(f"  classes: {list(self.schema.classes)}")
        elif self.schema.head == "next_token":
            lines.append(f"  token vocabulary: {len(self.schema.vocabulary)} values")
        if self.schema.threshold is not None:
            lines.append(f"  {self.schema.threshold.describe()}; score-file writes it as the alert column")
        if self.holdout_metrics:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in self.holdout_metrics.items())
            lines.append(f"  on the held-out part: {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def save_fitted(fitted: FittedFileModel, directory: Path) -> Path:
    """``directory``: the weights (``model.safetensors`` + ``config.json``) and ``file_schema.json``."""
    path = save_model(fitted.model, directory)
    fitted.schema.save(path)
    return path


def register_fitted(fitted: FittedFileModel) -> str:
    """Log a new version of ``rnnstream-<pipeline>`` in MLflow (the file schema in its meta); returns its URI.

    The first version of a model also gets the ``champion`` alias, so ``models:/<name>@champion`` works.
    """
    from rnnstream.workers import model_registry as registry  # configures MLflow's environment first
    from rnnstream.workers.tracking import flatten_params, log_epoch_history, resolve_store, training_run

    mlflow = registry.mlflow

    store = resolve_store()
    schema = fitted.schema
    extra = {META_FILE_SCHEMA: schema.to_dict(), "holdout_metrics": fitted.holdout_metrics}
    with training_run(
        store, schema.pipeline, run_name=f"fit-file-{schema.pipeline}", tags={"rnnstream.source": "fit-file"}
    ):
        mlflow.log_params(flatten_params({"model": fitted.model.config.to_dict(), "file": schema.to_dict()}))
        log_epoch_history(fitted.history)
        if fitted.holdout_metrics:
            mlflow.log_metrics({f"holdout_{k}": v for k, v in fitted.holdout_metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(schema.save(Path(tmp))))
        logged = registry.log_model_version(fitted.model, schema.event_schema(), extra_meta=extra)
    if registry.alias_version(store, schema.pipeline, "champion") is None:
        registry.promote(store, schema.pipeline, logged.version, "champion")
        return f"models:/{logged.name}@champion (version {logged.version})"
    return f"models:/{logged.name}/{logged.version}"


def load_fitted(ref: str | Path) -> tuple[StreamingModel, FileSchema]:
    """A fit-file model from its folder or MLflow (``models:/<name>@<alias>``, ``models:/<name>/<v>``)."""
    text = str(ref)
    if text.startswith("models:/"):
        from rnnstream.workers import model_registry as registry

        try:
            loaded = registry.load_version(text)
        except registry.RegistryError as exc:
            raise UsageError(str(exc)) from exc
        doc = loaded.meta.get(META_FILE_SCHEMA)
        if not doc:
            raise UsageError(f"{text} was not made by `rnnstream fit-file` (its meta has no file schema)")
        return loaded.model, FileSchema.from_dict(doc)
    path = Path(text)
    if not path.is_dir():
        raise UsageError(
            f"no model folder {path} (give a folder from fit-file --model-out, or models:/name@alias)"
        )
    schema = FileSchema.load(path)
    return load_model(path), schema
