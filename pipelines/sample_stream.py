"""Events for any pipeline name: the registered pipeline's schema and generator, else a built-in test schema.

``rnnstream produce``, ``serve`` and ``archive`` accept any pipeline name so that a user can try the plumbing
before writing a pipeline of their own; a name that is not registered gets :func:`sample_schema` and the
seeded :func:`sample_events` generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from rnnstream.pipelines.spec import PIPELINE_NAMES, PipelineSpec, get_pipeline
from rnnstream.rnn_core.event_schema import EventSchema

TEST_BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def sample_schema(pipeline: str, version: int = 1) -> EventSchema:
    """The built-in schema for pipelines without a registered spec: two numbers, a 4-vector, a category."""
    return EventSchema(
        pipeline=pipeline,
        version=version,
        numeric=("value", "amount"),
        vectors=(("emb", 4),),
        categorical=(("kind", ("a", "b", "c")),),
        has_label=True,
    )


def sample_events(
    schema: EventSchema, n: int, keys: int, seed: int = 0, start_ms: int = TEST_BASE_TIME_MS
) -> pa.Table:
    """``n`` seeded events of ``keys`` keys, interleaved, in event-time order, in ``schema``'s arrow schema.

    Fills any schema (numbers normal, vectors normal float32, categories from the vocabulary plus an
    unknown value now and then, label 0/1).
    """
    rng = np.random.default_rng(seed)
    key_ids = rng.integers(0, max(1, keys), size=n)
    cols: dict[str, Any] = {
        "key": pa.array([f"k{int(i):05d}" for i in key_ids], pa.string()),
        "time": pa.array(start_ms + np.cumsum(rng.integers(1, 50, size=n)), pa.timestamp("ms")),
    }
    for name in schema.numeric:
        cols[name] = pa.array(rng.normal(size=n))
    for name, size in schema.vectors:
        values = pa.array(rng.normal(size=n * size).astype(np.float32))
        cols[name] = pa.FixedSizeListArray.from_arrays(values, size)
    for name, vocab in schema.categorical:
        choices = np.array([*vocab, "unknown-value"], dtype=object)
        cols[name] = pa.array(choices[rng.integers(0, len(choices), size=n)].tolist(), pa.string())
    if schema.has_label:
        cols["label"] = pa.array(rng.integers(0, 2, size=n), pa.int64())
    return pa.table(cols).cast(schema.arrow_schema())


def registered_pipeline(pipeline: str) -> PipelineSpec | None:
    """The registered spec of ``pipeline`` (``_`` and ``-`` interchangeable), None for any other name."""
    if pipeline.replace("_", "-") not in PIPELINE_NAMES:
        return None
    return get_pipeline(pipeline)


def resolve_schema(pipeline: str) -> EventSchema:
    """The registered pipeline's event schema, else the built-in test schema named ``pipeline``."""
    spec = registered_pipeline(pipeline)
    return spec.schema if spec is not None else sample_schema(pipeline)


def generate_events(pipeline: str, n: int, keys: int, seed: int = 0) -> pa.Table:
    """``n`` events of ``keys`` keys from the registered pipeline's generator, else :func:`sample_events`."""
    spec = registered_pipeline(pipeline)
    if spec is None:
        return sample_events(sample_schema(pipeline), n, keys, seed)
    target = spec.schema.arrow_schema()
    return spec.generate(n, keys, seed).table.select(target.names).cast(target).slice(0, n)
