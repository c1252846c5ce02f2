"""How to reach a Kafka cluster: bootstrap servers plus security settings passed through to kafka-python.

Works against any Kafka (the embedded broker, Strimzi, MSK, Confluent): nothing here is broker specific.
Settings come from (later wins) defaults, a config file (JSON or YAML, a mapping, optionally under a
``kafka:`` key) and ``RNNSTREAM_KAFKA_*`` environment variables (e.g. ``RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS``,
``RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD``). Secrets never appear in ``repr`` or logs.

``check_reachable()`` gives a fast, clear error ("no broker at HOST:PORT ...") instead of kafka-python's
30 s bootstrap wait.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rnnstream.workers.config_document import read_config_mapping

ENV_PREFIX = "RNNSTREAM_KAFKA_"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SECRET_FIELDS = frozenset({"sasl_plain_password", "ssl_password", "sasl_oauth_token_provider"})


class KafkaUnreachable(ConnectionError):
    """No broker answers at the configured bootstrap servers (``details``: the error per server)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class KafkaSettings:
    """Connection settings for every Kafka client rnnstream makes.

    ``bootstrap_servers`` is a comma-separated ``host:port`` list. The security fields are kafka-python's
    own option names and are passed through unchanged when set; ``extra`` passes any other kafka-python
    option. ``bootstrap_timeout_ms`` bounds how long a client waits for the first broker answer.
    """

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    client_id: str = "rnnstream"
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    sasl_kerberos_service_name: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool | None = None
    bootstrap_timeout_ms: int = 10_000
    request_timeout_ms: int = 30_000
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers or not self.servers():
            raise ValueError("KafkaSettings: bootstrap_servers must name at least one host:port")

    def servers(self) -> list[tuple[str, int]]:
        """The bootstrap servers as (host, port) pairs (port 9092 when omitted)."""
        out = []
        for item in str(self.bootstrap_servers).split(","):
            item = item.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep:
                host, port = item, "9092"
            out.append((host.strip("[]"), int(port)))
        return out

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for KafkaConsumer / KafkaProducer / KafkaAdminClient (unset options left out)."""
        kw: dict[str, Any] = {
            "bootstrap_servers": [f"{h}:{p}" for h, p in self.servers()],
            "client_id": self.client_id,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "request_timeout_ms": self.request_timeout_ms,
        }
        for f in fields(self):
            if f.name in ("bootstrap_servers", "client_id", "bootstrap_timeout_ms", "request_timeout_ms"):
                continue
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None:
                kw[f.name] = value
        kw.update(self.extra)
        return kw

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict fit for logs: secrets replaced by ``***``."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for k in SECRET_FIELDS & d.keys():
            if d[k] is not None:
                d[k] = "***"
        d["extra"] = {k: ("***" if _looks_secret(k) else v) for k, v in self.extra.items()}
        return d

    def with_servers(self, bootstrap_servers: str) -> KafkaSettings:
        return replace(self, bootstrap_servers=bootstrap_servers)

    def check_reachable(self, timeout_s: float = 2.0) -> None:
        """Raise KafkaUnreachable fast when no bootstrap server accepts a TCP connection."""
        errors = []
        for host, port in self.servers():
            try:
                with socket.create_connection((host, port), timeout=timeout_s):
                    return
            except OSError as exc:
                errors.append(f"{host}:{port} ({exc.strerror or exc})")
        raise KafkaUnreachable(
            f"no broker at {self.bootstrap_servers} (start one with `rnnstream broker start`)",
            "; ".join(errors),
        )

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> KafkaSettings:
        """Build from a dict of field names (unknown keys go to ``extra``, i.e. straight to kafka-python)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = dict(d.get("extra", {}) or {})
        for k, v in d.items():
            if k == "extra":
                continue
            if k in known:
                kw[k] = _coerce(cls, k, v)
            else:
                extra[k] = v
        return cls(**kw, extra=extra)

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> KafkaSettings:
        """Defaults, then ``config_file`` (JSON/YAML), then ``RNNSTREAM_KAFKA_*`` env vars, then overrides.

        ``RNNSTREAM_KAFKA_CONFIG`` names a config file when ``config_file`` is not given. Overrides that are
        None are ignored (so CLI flags left unset do not clobber the file or environment).
        """
        env = os.environ if env is None else env
        merged: dict[str, Any] = {}
        path = config_file or env.get(ENV_PREFIX + "CONFIG")
        if path:
            merged.update(_read_config_file(path))
        for k, v in env.items():
            if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "CONFIG":
                merged[k[len(ENV_PREFIX) :].lower()] = v
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(merged)


def _looks_secret(name: str) -> bool:
    n = name.lower()
    return any(s in n for s in ("password", "secret", "token", "key"))


def _coerce(cls: type, name: str, value: Any) -> Any:
    if name in ("bootstrap_timeout_ms", "request_timeout_ms"):
        return int(value)
    if name == "ssl_check_hostname" and isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if name == "bootstrap_servers" and isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def _read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Kafka client file's settings: the whole mapping, or its ``kafka:`` section (a run-config file)."""
    data = read_config_mapping(path, "a Kafka client file must be a mapping of settings")
    if isinstance(data.get("kafka"), dict):
        data = data["kafka"]
    return data
