"""The deployment config file (``/etc/rnnstream/config.yaml``): read and validated once, at the edge.

The Helm chart renders it into a ConfigMap and points ``--config`` and ``$RNNSTREAM_CONFIG`` at it. Layout
(snake_case keys, YAML or JSON; every section optional, defaults below)::

    pipelines:            # deployed pipelines by name
      fraud: {partitions: 12, workers: 2, model_alias: champion, model_uri: models:/rnnstream-fraud@champion}
    kafka:                # KafkaSettings field names; kafka-python options that have none go under `extra`
      bootstrap_servers: kafka-bootstrap.kafka.svc:9092
      security_protocol: SASL_SSL
      sasl_mechanism: SCRAM-SHA-512
      ssl_cafile: /etc/rnnstream-kafka/ca.crt
    serving: {checkpoint_uri: s3://..., key_ttl_seconds: 86400, max_batch_events: 4096, batch_linger_ms: 20,
              checkpoint_interval_events: 50000, checkpoint_interval_seconds: 30,
              warmup_archive_events: 256}   # each optional
    archive: {uri: s3://rnnstream-archive/events}
    mlflow: {tracking_uri: http://rnnstream-mlflow:5000}

:func:`load_run_config` checks every key and type and raises :class:`ConfigError` with one line naming the
file, the key and what is wrong; the result is a frozen :class:`RunConfig` whose sections are typed
dataclasses. Kafka security is not parsed here: the file's ``kafka`` section is handed to
:meth:`KafkaSettings.load`, which layers the ``RNNSTREAM_KAFKA_*`` environment (SASL credentials from
Secrets) on top, so the file never needs to hold a secret.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from rnnstream.rnn_core.config import ConfigError
from rnnstream.workers.kafka_settings import KafkaSettings

if TYPE_CHECKING:
    from rnnstream.pipelines.spec import ServingDefaults

CONFIG_ENV = "RNNSTREAM_CONFIG"
SECTIONS: tuple[str, ...] = ("pipelines", "kafka", "serving", "archive", "mlflow")
_PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_KAFKA_FIELDS: dict[str, type | tuple[type, ...]] = {
    "bootstrap_servers": (str, list),
    "client_id": str,
    "security_protocol": str,
    "sasl_mechanism": str,
    "sasl_plain_username": str,
    "sasl_plain_password": str,
    "sasl_kerberos_service_name": str,
    "ssl_cafile": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_check_hostname": bool,
    "bootstrap_timeout_ms": int,
    "request_timeout_ms": int,
    "extra": dict,
}
_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true/false",
    dict: "a mapping",
    list: "a list",
}
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class PipelineDeployment:
    """One deployed pipeline: topic partitions, scoring workers, and the model it serves."""

    name: str
    partitions: int
    workers: int
    model_alias: str = "champion"
    model_uri: str = ""

    def __post_init__(self) -> None:
        if not self.model_uri:
            object.__setattr__(self, "model_uri", f"models:/rnnstream-{self.name}@{self.model_alias}")


@dataclass(frozen=True)
class ServingSection:
    """How scoring workers batch, forget and checkpoint. None: not set in the file, so the pipeline's own
    default (:class:`rnnstream.pipelines.spec.ServingDefaults`) holds; ``checkpoint_uri`` None: the local
    data dir. :meth:`apply_to` merges the two."""

    checkpoint_uri: str | None = None
    key_ttl_seconds: int | None = None
    max_batch_events: int | None = None
    batch_linger_ms: int | None = None
    checkpoint_interval_events: int | None = None
    checkpoint_interval_seconds: float | None = None
    warmup_archive_events: int | None = None  # a hot swap warms each key from this many archived events

    def apply_to(self, defaults: ServingDefaults, partitions: int | None = None) -> ServingDefaults:
        """``defaults`` with every value this section sets (and ``partitions``, e.g. from the pipeline's
        entry) put in its place."""
        changes: dict[str, Any] = {}
        if partitions is not None:
            changes["partitions"] = partitions
        if self.key_ttl_seconds is not None:
            changes["key_ttl_seconds"] = self.key_ttl_seconds
        if self.max_batch_events is not None:
            changes["max_batch_events"] = self.max_batch_events
        if self.batch_linger_ms is not None:
            changes["batch_linger_ms"] = self.batch_linger_ms
        if self.checkpoint_interval_events is not None:
            changes["checkpoint_interval_events"] = self.checkpoint_interval_events
        if self.checkpoint_interval_seconds is not None:
            changes["checkpoint_interval_seconds"] = float(self.checkpoint_interval_seconds)
        return replace(defaults, **changes)


@dataclass(frozen=True)
class ArchiveSection:
    """Root of the Parquet event archive (``uri`` None: the local data dir's ``archive/``)."""

    uri: str | None = None


@dataclass(frozen=True)
class MlflowSection:
    """Where the MLflow tracking server / model registry is (None: ``$MLFLOW_TRACKING_URI`` or local)."""

    tracking_uri: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """The whole deployment config; ``source`` is the file it came from (for messages)."""

    pipelines: Mapping[str, PipelineDeployment] = field(default_factory=lambda: MappingProxyType({}))
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    serving: ServingSection = field(default_factory=ServingSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    mlflow: MlflowSection = field(default_factory=MlflowSection)
    source: str = "<defaults>"

    def pipeline(self, name: str) -> PipelineDeployment:
        """The deployment entry of pipeline ``name``; :class:`ConfigError` when the file has none."""
        found = self.pipelines.get(name) or self.pipelines.get(name.replace("_", "-"))
        if found is None:
            listed = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"{self.source}: pipeline {name!r} is not under `pipelines` (listed: {listed})")
        return found

    def tracking_uri(self, env: Mapping[str, str] | None = None) -> str | None:
        """The MLflow URI to use: ``$MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri``."""
        env = os.environ if env is None else env
        return env.get("MLFLOW_TRACKING_URI") or self.mlflow.tracking_uri

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<mapping>") -> RunConfig:
        """Validate a parsed config document (no environment: see :func:`load_run_config`)."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the config must be a mapping with keys {', '.join(SECTIONS)}")
        _reject_unknown(data, SECTIONS, "", source)
        pipelines = _pipelines(data.get("pipelines"), source)
        kafka_section = _section_mapping(data, "kafka", source)
        _check_kafka(kafka_section, source)
        try:
            kafka = KafkaSettings.from_mapping(kafka_section)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: kafka: {exc}") from exc
        serving = _dataclass_section(
            ServingSection, _section_mapping(data, "serving", source), "serving", source
        )
        _check_serving(serving, source)
        archive = _dataclass_section(
            ArchiveSection, _section_mapping(data, "archive", source), "archive", source
        )
        mlflow = _dataclass_section(MlflowSection, _section_mapping(data, "mlflow", source), "mlflow", source)
        return cls(MappingProxyType(pipelines), kafka, serving, archive, mlflow, source)


def config_path(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The config file to read: ``path`` (the ``--config`` flag) if given, else ``$RNNSTREAM_CONFIG``."""
    env = os.environ if env is None else env
    chosen = path if path else env.get(CONFIG_ENV)
    return str(chosen) if chosen else None


def load_run_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> RunConfig:
    """Read and validate the config file named by ``path`` or ``$RNNSTREAM_CONFIG``.

    No file named: a :class:`RunConfig` of defaults (local development), its Kafka settings still taken
    from the environment. Kafka settings are built by :meth:`KafkaSettings.load` (the file's ``kafka``
    section, then ``RNNSTREAM_KAFKA_*`` variables). Every mistake is one :class:`ConfigError` line.
    """
    env = os.environ if env is None else env
    chosen = config_path(path, env)
    if chosen is None:
        return replace(RunConfig(), kafka=_kafka_from_env(None, env))
    config = RunConfig.from_mapping(read_config_document(chosen), source=chosen)
    return replace(config, kafka=_kafka_from_env(chosen, env))


def read_config_document(path: str | os.PathLike[str]) -> Any:
    """The parsed YAML (``.yaml``/``.yml``) or JSON document of ``path``; one-line errors."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist (set --config or ${CONFIG_ENV})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON at line {exc.lineno}: {exc.msg}") from None


# ------------------------------------------------------------------------------------------------ helpers
def _kafka_from_env(path: str | None, env: Mapping[str, str]) -> KafkaSettings:
    try:
        return KafkaSettings.load(config_file=path, env=env)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or 'environment'}: kafka: {exc}") from None


def _reject_unknown(
    d: Mapping[str, Any], allowed: tuple[str, ...] | set[str], where: str, source: str
) -> None:
    for key in d:
        if key not in allowed:
            hint = f" (allowed: {', '.join(sorted(allowed))})"
            raise ConfigError(f"{source}: unknown key {where}{key!r}{hint}")


def _section_mapping(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: `{name}` must be a mapping, got {_describe(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{source}: `{name}` keys must be strings, got {bad[0]!r}")
    return dict(value)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_type(value: Any, expected: type | tuple[type, ...], where: str, source: str) -> Any:
    """``value`` if it is of ``expected`` (bool is not an int; an int is a float); else ConfigError."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = any(_is_kind(value, k) for k in kinds)
    if not ok:
        names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise ConfigError(f"{source}: {where} must be {names}, got {_describe(value)}")
    return float(value) if kinds == (float,) else value


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _dataclass_section(cls: type, d: dict[str, Any], name: str, source: str) -> Any:
    """Build frozen dataclass ``cls`` from section ``d``: unknown keys and wrong types are errors."""
    specs = {f.name: f for f in fields(cls)}
    _reject_unknown(d, set(specs), f"{name}.", source)
    kw: dict[str, Any] = {}
    for key, value in d.items():
        default = specs[key].default
        hint = str(specs[key].type)
        optional = "None" in hint or default is None
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: {name}.{key} needs a value")
            kw[key] = None
            continue
        expected = int if hint.startswith("int") else float if hint.startswith("float") else str
        kw[key] = _check_type(value, expected, f"{name}.{key}", source)
    return cls(**kw)


def _check_serving(s: ServingSection, source: str) -> None:
    minimum = {
        "key_ttl_seconds": 1,
        "max_batch_events": 1,
        "checkpoint_interval_events": 1,
        "batch_linger_ms": 0,
        "warmup_archive_events": 0,
    }
    for key, low in minimum.items():
        value = getattr(s, key)
        if value is not None and value < low:
            raise ConfigError(f"{source}: serving.{key} must be >= {low}, got {value}")
    if s.checkpoint_interval_seconds is not None and s.checkpoint_interval_seconds <= 0:
        raise ConfigError(
            f"{source}: serving.checkpoint_interval_seconds must be > 0, got {s.checkpoint_interval_seconds}"
        )


def _check_kafka(d: dict[str, Any], source: str) -> None:
    for key, value in d.items():
        if key not in _KAFKA_FIELDS:
            raise ConfigError(
                f"{source}: unknown key kafka.{key!r} (KafkaSettings fields: "
                f"{', '.join(sorted(_KAFKA_FIELDS))}; put other kafka-python options under kafka.extra)"
            )
        if value is not None:
            _check_type(value, _KAFKA_FIELDS[key], f"kafka.{key}", source)
    protocol = d.get("security_protocol")
    if protocol is not None and protocol not in _SECURITY_PROTOCOLS:
        raise ConfigError(
            f"{source}: kafka.security_protocol must be one of {', '.join(_SECURITY_PROTOCOLS)}, "
            f"got {protocol!r}"
        )


def _pipelines(value: Any, source: str) -> dict[str, PipelineDeployment]:
    from rnnstream.pipelines.spec import PIPELINE_NAMES

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{source}: `pipelines` must map a pipeline name to its settings, got {_describe(value)}"
        )
    out: dict[str, PipelineDeployment] = {}
    allowed = {f.name for f in fields(PipelineDeployment)} - {"name"}
    for name, entry in value.items():
        if not isinstance(name, str) or not _PIPELINE_NAME.match(name):
            raise ConfigError(f"{source}: pipeline name {name!r} must match {_PIPELINE_NAME.pattern}")
        if name.replace("_", "-") not in PIPELINE_NAMES:
            raise ConfigError(
                f"{source}: unknown pipeline {name!r} under `pipelines`; "
                f"choose from {', '.join(PIPELINE_NAMES)}"
            )
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: pipelines.{name} must be a mapping, got {_describe(entry)}")
        _reject_unknown(entry, allowed, f"pipelines.{name}.", source)
        for required in ("partitions", "workers"):
            if required not in entry:
                raise ConfigError(f"{source}: pipelines.{name}.{required} is missing")
        partitions = _check_type(entry["partitions"], int, f"pipelines.{name}.partitions", source)
        workers = _check_type(entry["workers"], int, f"pipelines.{name}.workers", source)
        if partitions < 1 or workers < 1:
            raise ConfigError(f"{source}: pipelines.{name}: partitions and workers must be >= 1")
        if workers > partitions:
            raise ConfigError(
                f"{source}: pipelines.{name}: {workers} workers for {partitions} partitions "
                "(each worker needs at least one partition)"
            )
        alias = _check_type(
            entry.get("model_alias", "champion"), str, f"pipelines.{name}.model_alias", source
        )
        uri = _check_type(entry.get("model_uri", ""), str, f"pipelines.{name}.model_uri", source)
        out[name] = PipelineDeployment(name, partitions, workers, alias, uri)
    return out
