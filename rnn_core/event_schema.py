"""A pipeline's event schema: the columns of one event, versioned, as a pyarrow schema.

Every event has a stream key (string) and an event time (timestamp, ms). Then the pipeline's fields:
numbers (float64), fixed-size feature vectors (float32), categories (strings, with a known vocabulary;
unknown values are mapped to an "unknown" bucket, not rejected), and an optional integer label.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from rnnstream.rnn_core.config import ConfigError, FeatureSpec

KEY_COLUMN = "key"
TIME_COLUMN = "time"
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class EventSchema:
    """The shape of one pipeline's events; ``version`` changes whenever a column changes."""

    pipeline: str
    version: int
    numeric: tuple[str, ...] = ()
    vectors: tuple[tuple[str, int], ...] = ()
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()
    has_label: bool = False

    def __post_init__(self) -> None:
        if not self.pipeline:
            raise ConfigError("EventSchema needs a pipeline name")
        names = [*self.numeric, *(n for n, _ in self.vectors), *(n for n, _ in self.categorical)]
        reserved = {KEY_COLUMN, TIME_COLUMN, LABEL_COLUMN} & set(names)
        if reserved:
            raise ConfigError(f"EventSchema: {sorted(reserved)} are reserved column names")
        if len(set(names)) != len(names):
            raise ConfigError(f"EventSchema: a column is listed twice in {names}")

    @property
    def field_names(self) -> tuple[str, ...]:
        """The pipeline's own columns (not key, time or label), in schema order."""
        return (*self.numeric, *(n for n, _ in self.vectors), *(n for n, _ in self.categorical))

    def arrow_schema(self) -> pa.Schema:
        """The pyarrow schema of a batch of these events (key, time, fields, optional label)."""
        cols: list[pa.Field] = [
            pa.field(KEY_COLUMN, pa.string(), nullable=False),
            pa.field(TIME_COLUMN, pa.timestamp("ms"), nullable=False),
        ]
        cols += [pa.field(n, pa.float64(), nullable=False) for n in self.numeric]
        cols += [pa.field(n, pa.list_(pa.float32(), size), nullable=False) for n, size in self.vectors]
        cols += [pa.field(n, pa.string(), nullable=False) for n, _ in self.categorical]
        if self.has_label:
            cols.append(pa.field(LABEL_COLUMN, pa.int64(), nullable=True))
        meta = {
            b"rnnstream.pipeline": self.pipeline.encode(),
            b"rnnstream.schema_version": str(self.version).encode(),
        }
        return pa.schema(cols, metadata=meta)

    def feature_spec(self, use_time_delta: bool = True) -> FeatureSpec:
        """How these events feed a model: every field, plus the time since the key's previous event."""
        return FeatureSpec(
            numeric=self.numeric,
            vectors=tuple(n for n, _ in self.vectors),
            vector_sizes=tuple(s for _, s in self.vectors),
            categorical=tuple(n for n, _ in self.categorical),
            vocabularies=tuple(v for _, v in self.categorical),
            use_time_delta=use_time_delta,
        )

    def to_dict(self) -> dict:
        return {
            "pipeline": self.pipeline,
            "version": self.version,
            "numeric": list(self.numeric),
            "vectors": [[n, s] for n, s in self.vectors],
            "categorical": [[n, list(v)] for n, v in self.categorical],
            "has_label": self.has_label,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EventSchema:
        return cls(
            pipeline=d["pipeline"],
            version=int(d["version"]),
            numeric=tuple(d.get("numeric", ())),
            vectors=tuple((n, int(s)) for n, s in d.get("vectors", ())),
            categorical=tuple((n, tuple(v)) for n, v in d.get("categorical", ())),
            has_label=bool(d.get("has_label", False)),
        )
