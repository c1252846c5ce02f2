"""Model and feature configuration: frozen dataclasses, validated once when built, JSON round-trippable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Cell = Literal["rnn", "lstm", "gru"]
Head = Literal["binary", "forecast", "multiclass", "next_token"]

CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
HEADS: tuple[str, ...] = ("binary", "forecast", "multiclass", "next_token")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class FeatureSpec:
    """How a decoded event (an Arrow row) becomes the model's input vector.

    The model input ``x[..., D]`` is laid out as: the ``numeric`` columns, then each fixed-size ``vector``
    column expanded in place (``vector_sizes`` gives their lengths), then one integer code per ``categorical``
    column (code 0 is the "unknown" bucket, code i+1 the i-th value of its vocabulary), and last, when
    ``use_time_delta`` is set, the seconds since the key's previous event (filled in by the stream scorer,
    not read from the event).
    """

    numeric: tuple[str, ...] = ()
    vectors: tuple[str, ...] = ()
    vector_sizes: tuple[int, ...] = ()
    categorical: tuple[str, ...] = ()
    vocabularies: tuple[tuple[str, ...], ...] = ()
    use_time_delta: bool = False

    def __post_init__(self) -> None:
        if len(self.vectors) != len(self.vector_sizes):
            raise ConfigError("FeatureSpec: give one entry of vector_sizes per vector column")
        if len(self.categorical) != len(self.vocabularies):
            raise ConfigError("FeatureSpec: give one vocabulary per categorical column")
        if any(n <= 0 for n in self.vector_sizes):
            raise ConfigError("FeatureSpec: vector_sizes must be positive")
        names = [*self.numeric, *self.vectors, *self.categorical]
        if len(set(names)) != len(names):
            raise ConfigError(f"FeatureSpec: a column is listed twice in {names}")
        if not names:
            raise ConfigError("FeatureSpec: name at least one numeric, vector or categorical column")

    @property
    def num_continuous(self) -> int:
        """Numeric values per event, vectors expanded (time delta not counted)."""
        return len(self.numeric) + sum(self.vector_sizes)

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Embedding table sizes: vocabulary plus the unknown bucket."""
        return tuple(len(v) + 1 for v in self.vocabularies)

    @property
    def input_size(self) -> int:
        """Width D of the model input vector."""
        return self.num_continuous + len(self.categorical) + int(self.use_time_delta)

    def to_dict(self) -> dict[str, Any]:
        return {k: _listify(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(**{k: _tuplify(v) for k, v in d.items() if k in _field_names(cls)})


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`StreamingModel`.

    ``head`` picks what the model says about each event:

    - ``binary``: probability that the event is positive (fraud), from the state after the event;
    - ``multiclass``: class probabilities (activity), from the state after the event;
    - ``forecast``: the state before the event predicts the event's continuous values; the anomaly score is
      the standardized prediction error (learned scale), and the forecast of the next event is returned too;
    - ``next_token``: the state before the event predicts the first categorical column (e.g. a log-template
      id); the anomaly score comes from the probability and rank of the token that came.

    ``stateless=True`` makes the same-size baseline that sees each event alone (state reset every step).

    ``adaptive_score`` (forecast heads, not stateless): ``score`` is the key's own anomaly likelihood of its
    recent errors (:mod:`rnnstream.rnn_core.anomaly_likelihood`), kept per key in one more state slab; the
    static calibrated map of the raw error is ``score_static``. ``adaptive_inputs`` (with it): each key
    normalizes its continuous inputs with its own running level and scale, which follow drift
    (:mod:`rnnstream.rnn_core.input_drift`); fit-file turns it on.
    """

    features: FeatureSpec
    cell: Cell = "gru"
    head: Head = "binary"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    num_classes: int = 2
    embedding_dim: int = 16
    stateless: bool = False
    adaptive_score: bool = True
    adaptive_inputs: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if not 1 <= self.num_layers <= 8:
            raise ConfigError(f"num_layers must be 1..8, got {self.num_layers}")
        if not 1 <= self.hidden_size <= 8192:
            raise ConfigError(f"hidden_size must be 1..8192, got {self.hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head == "multiclass" and self.num_classes < 2:
            raise ConfigError("a multiclass head needs num_classes >= 2")
        if self.head == "forecast" and self.features.num_continuous == 0:
            raise ConfigError("a forecast head needs numeric or vector feature columns to forecast")
        if self.head == "next_token" and not self.features.categorical:
            raise ConfigError("a next_token head needs a categorical token column (the first categorical)")

    @property
    def state_tensors(self) -> int:
        """Tensors per layer in the recurrent state: 2 for LSTM (h, c), else 1."""
        return 2 if self.cell == "lstm" else 1

    @property
    def adaptive_likelihood(self) -> bool:
        """Whether each key keeps the running error statistics of the adaptive forecast score."""
        return self.head == "forecast" and self.adaptive_score and not self.stateless

    @property
    def adaptive_drift(self) -> bool:
        """Whether each key normalizes its inputs with its own running level and scale (follows drift)."""
        return self.adaptive_likelihood and self.adaptive_inputs

    @property
    def statistics_slabs(self) -> int:
        """State slabs after the recurrent ones for the per-key statistics: 6 error statistics, and with
        ``adaptive_inputs`` a count and a level, a variance and an outlier run per continuous column."""
        if not self.adaptive_likelihood:
            return 0
        values = 6 + (1 + 3 * self.features.num_continuous if self.adaptive_inputs else 0)
        return -(-values // (self.num_layers * self.hidden_size))

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Per-key state shape ``(S, num_layers, hidden_size)``: ``S`` = the recurrent state tensors, plus the
        :attr:`statistics_slabs` (see :mod:`rnnstream.rnn_core.adaptive_state`)."""
        return (self.state_tensors + self.statistics_slabs, self.num_layers, self.hidden_size)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["features"] = self.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        unknown = set(d) - _field_names(cls)
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        d["features"] = FeatureSpec.from_dict(d["features"])
        return cls(**d)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _listify(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_listify(x) for x in v]
    return v


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v
