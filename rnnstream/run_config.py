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
              commit_interval_ms: 100,
              checkpoint_interval_events: 50000, checkpoint_interval_seconds: 30,
              warmup_archive_events: 256, metrics_port: 9464, max_record_bytes: 1000000}   # each optional
    archive: {uri: s3://rnnstream-archive/events}
    mlflow: {tracking_uri: http://rnnstream-mlflow:5000}

:func:`load_run_config` reads the file with the one reader (:mod:`rnnstream.workers.config_document`),
validates every key and type with pydantic (each section is a strict pydantic dataclass) and turns the first
problem into one :class:`ConfigError` line naming the file, the key and what is allowed; the result is a
frozen :class:`RunConfig` whose sections are those dataclasses. The file's ``kafka`` section is checked
against KafkaSettings' field names and handed to :meth:`KafkaSettings.load`, which layers the
``RNNSTREAM_KAFKA_*`` environment (SASL credentials from Secrets) on top, so the file never holds a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StrictInt, StrictStr
from pydantic.dataclasses import dataclass as section

from rnnstream.rnn_core.config import ConfigError
from rnnstream.workers.config_document import read_config_mapping, validated
from rnnstream.workers.kafka_settings import KafkaSettings

if TYPE_CHECKING:
    from rnnstream.pipelines.spec import ServingDefaults

CONFIG_ENV = "RNNSTREAM_CONFIG"
SECTIONS: tuple[str, ...] = ("pipelines", "kafka", "serving", "archive", "mlflow")
_PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_FORBID = ConfigDict(extra="forbid")
# Strict scalars: "5" is not an integer and true is not a number; an integer is a number.
AtLeastOne = Annotated[StrictInt, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0, strict=True)]


@section(frozen=True, config=_FORBID)
class PipelineDeployment:
    """One deployed pipeline: topic partitions, scoring workers, and the model it serves."""

    name: StrictStr
    partitions: AtLeastOne
    workers: AtLeastOne
    model_alias: StrictStr = "champion"
    model_uri: StrictStr = ""

    def __post_init__(self) -> None:
        if not self.model_uri:
            object.__setattr__(self, "model_uri", f"models:/rnnstream-{self.name}@{self.model_alias}")
        if self.workers > self.partitions:
            raise ValueError(
                f"{self.workers} workers for {self.partitions} partitions "
                "(each worker needs at least one partition)"
            )


@section(frozen=True, config=_FORBID)
class ServingSection:
    """How scoring workers batch, forget, checkpoint and warm up. None: not set in the file, so the
    pipeline's own default (:class:`rnnstream.pipelines.spec.ServingDefaults`, else WorkerConfig's) holds;
    ``checkpoint_uri`` None: the local data dir. :meth:`apply_to` merges the two."""

    checkpoint_uri: StrictStr | None = None
    key_ttl_seconds: AtLeastOne | None = None
    max_batch_events: AtLeastOne | None = None
    batch_linger_ms: Annotated[StrictInt, Field(ge=0)] | None = None
    # behind, a worker commits at least this often (keeping up, as soon as a batch is scored)
    commit_interval_ms: AtLeastOne | None = None
    checkpoint_interval_events: AtLeastOne | None = None
    checkpoint_interval_seconds: Seconds | None = None
    warmup_archive_events: Annotated[StrictInt, Field(ge=0)] | None = None  # per key, from archive.uri
    metrics_port: Annotated[StrictInt, Field(ge=0, le=65535)] | None = None  # + worker slot; 0: any free port
    # largest score / dead-letter record; above the 16 KiB a dead letter's key and headers take
    max_record_bytes: Annotated[StrictInt, Field(ge=65_536)] | None = None

    def apply_to(self, defaults: ServingDefaults, partitions: int | None = None) -> ServingDefaults:
        """``defaults`` with every value this section sets that ``defaults`` has (and ``partitions``, e.g.
        from the pipeline's entry) put in its place."""
        changes: dict[str, Any] = {} if partitions is None else {"partitions": partitions}
        for f in fields(defaults):
            value = getattr(self, f.name, None)
            if value is not None:
                changes[f.name] = value
        return replace(defaults, **changes)


@section(frozen=True, config=_FORBID)
class ArchiveSection:
    """Root of the Parquet event archive (``uri`` None: the local data dir's ``archive/``)."""

    uri: StrictStr | None = None


@section(frozen=True, config=_FORBID)
class MlflowSection:
    """Where the MLflow tracking server / model registry is (None: ``$MLFLOW_TRACKING_URI`` or local)."""

    tracking_uri: StrictStr | None = None


def _servers(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


@section(frozen=True, config=_FORBID)
class _KafkaSection:
    """What the file's ``kafka:`` section may hold (checked here; :meth:`KafkaSettings.from_mapping` builds
    the settings, then the environment is layered on): KafkaSettings' own field names."""

    bootstrap_servers: Annotated[StrictStr, BeforeValidator(_servers)] | None = None
    client_id: StrictStr | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: StrictStr | None = None
    sasl_plain_username: StrictStr | None = None
    sasl_plain_password: StrictStr | None = None
    sasl_kerberos_service_name: StrictStr | None = None
    ssl_cafile: StrictStr | None = None
    ssl_certfile: StrictStr | None = None
    ssl_keyfile: StrictStr | None = None
    ssl_password: StrictStr | None = None
    ssl_check_hostname: Annotated[bool, Field(strict=True)] | None = None
    bootstrap_timeout_ms: StrictInt | None = None
    request_timeout_ms: StrictInt | None = None
    extra: dict[str, Any] | None = None  # any other kafka-python option, passed through


@section(frozen=True, config=_FORBID)
class _Document:
    pipelines: dict[str, PipelineDeployment] | None = None
    kafka: _KafkaSection | None = None
    serving: ServingSection | None = None
    archive: ArchiveSection | None = None
    mlflow: MlflowSection | None = None


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
        data = dict(data)
        pipelines = data.get("pipelines")
        if pipelines is not None and not isinstance(pipelines, Mapping):
            raise ConfigError(
                f"{source}: `pipelines` must map a pipeline name to its settings, "
                f"got {pipelines!r} ({type(pipelines).__name__})"
            )
        if pipelines is not None:
            data["pipelines"] = _named_pipelines(pipelines, source)
        doc = validated(_Document, data, source, _ALLOWED)
        try:
            kafka = KafkaSettings.from_mapping(dict(data.get("kafka") or {}))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: kafka: {exc}") from None
        return cls(
            MappingProxyType(dict(doc.pipelines or {})),
            kafka,
            doc.serving or ServingSection(),
            doc.archive or ArchiveSection(),
            doc.mlflow or MlflowSection(),
            source,
        )


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
    expected = f"the config must be a mapping with keys {', '.join(SECTIONS)}"
    document = read_config_mapping(chosen, expected, missing_hint=f"set --config or ${CONFIG_ENV}")
    config = RunConfig.from_mapping(document, source=chosen)
    return replace(config, kafka=_kafka_from_env(chosen, env))


# ------------------------------------------------------------------------------------------------ helpers
def _kafka_from_env(path: str | None, env: Mapping[str, str]) -> KafkaSettings:
    try:
        return KafkaSettings.load(config_file=path, env=env)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or 'environment'}: kafka: {exc}") from None


def _named_pipelines(entries: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """``pipelines:`` with each entry's name put in (the key); names checked against the known pipelines."""
    from rnnstream.pipelines.spec import PIPELINE_NAMES

    out: dict[str, Any] = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or not _PIPELINE_NAME.match(name):
            raise ConfigError(f"{source}: pipeline name {name!r} must match {_PIPELINE_NAME.pattern}")
        if name.replace("_", "-") not in PIPELINE_NAMES:
            raise ConfigError(
                f"{source}: unknown pipeline {name!r} under `pipelines`; "
                f"choose from {', '.join(PIPELINE_NAMES)}"
            )
        if isinstance(entry, Mapping) and "name" in entry:
            raise ConfigError(f"{source}: unknown key pipelines.{name}.'name' (the key above is the name)")
        out[name] = {**entry, "name": name} if isinstance(entry, Mapping) else entry
    return out


# What each place of the document allows, for "unknown key" lines (pipelines.<name> is one place).
_ALLOWED: dict[str, tuple[str, ...]] = {
    "": SECTIONS,
    "pipelines.*": tuple(f.name for f in fields(PipelineDeployment) if f.name != "name"),
    "kafka": tuple(f.name for f in fields(_KafkaSection)),  # other kafka-python options: under kafka.extra
    "serving": tuple(f.name for f in fields(ServingSection)),
    "archive": tuple(f.name for f in fields(ArchiveSection)),
    "mlflow": tuple(f.name for f in fields(MlflowSection)),
}
