"""The events a training run learns from: the archive or any Parquet events, in event-time order, their
ground truth, and the time that splits them into the training part and the held-out part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from rnnstream.pipelines.spec import GeneratedStream, PipelineSpec
from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.event_schema import LABEL_COLUMN, TIME_COLUMN
from rnnstream.workers.archive_sink import read_archive


class NoTrainingData(ConfigError):
    """There are no events to train on; the message says how to get some."""


# ------------------------------------------------------------------------------------------------ events
def load_events(spec: PipelineSpec, source: str | Path) -> pa.Table:
    """The pipeline's events under ``source``, in event-time order, in the pipeline's event schema.

    ``source`` is the archive root (``pipeline=<p>/date=<d>/`` partitions, read with
    :func:`read_archive`; a local path or any URI pyarrow knows), or any Parquet file or folder of events
    (rows of other pipelines skipped when it has a ``pipeline`` column). Raises :class:`NoTrainingData`
    when there is nothing.
    """
    src = str(source)
    if "://" not in src and not Path(src).exists():
        raise NoTrainingData(_no_data_message(spec, src))
    try:
        table = read_archive(src, spec.name)
    except FileNotFoundError:
        dataset = ds.dataset(src, format="parquet", partitioning="hive")
        flt = (pc.field("pipeline") == spec.name) if "pipeline" in dataset.schema.names else None
        table = dataset.to_table(filter=flt)
    if table.num_rows == 0:
        raise NoTrainingData(_no_data_message(spec, src))
    arrow_schema = spec.schema.arrow_schema()
    missing = [f.name for f in arrow_schema if f.name not in table.column_names and f.name != LABEL_COLUMN]
    if missing:
        raise ConfigError(f"events under {src} lack the {spec.name} columns {missing}")
    if LABEL_COLUMN in arrow_schema.names and LABEL_COLUMN not in table.column_names:
        table = table.append_column(LABEL_COLUMN, pa.nulls(table.num_rows, pa.int64()))
    table = table.select(arrow_schema.names).cast(arrow_schema)
    return table.take(pc.sort_indices(table, sort_keys=[(TIME_COLUMN, "ascending")]))


def _no_data_message(spec: PipelineSpec, source: str) -> str:
    return (
        f"no archived {spec.name} events under {source}: archive the {spec.name}.events topic first "
        f"(rnnstream archive --pipeline {spec.name} --until-caught-up), point --data at a Parquet dataset, "
        f"or add --generate 20000 to train on a generated stream"
    )


def generate_events(spec: PipelineSpec, num_events: int, seed: int) -> GeneratedStream:
    """The pipeline's generator at its demo density (events per key), ``num_events`` events in all."""
    n_keys = max(4, min(spec.demo_keys, num_events // max(spec.demo_events_per_key, 1)))
    return spec.generate(num_events, n_keys, seed)


def truth_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """Ground truth an archived table carries: its ``label`` column (missing labels as 0)."""
    if LABEL_COLUMN not in table.column_names:
        return {}
    labels = pc.fill_null(table.column(LABEL_COLUMN), 0)
    return {"label": np.asarray(labels.to_numpy(zero_copy_only=False), dtype=np.int64)}


def split_by_time(table: pa.Table, holdout_fraction: float) -> int:
    """The split time (ms): events at or after it (the last ``holdout_fraction`` of events) are held out."""
    times = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
    idx = min(int(len(times) * (1.0 - holdout_fraction)), len(times) - 1)
    return int(np.sort(times)[idx])
