"""Reading a settings file: YAML (``.yaml``/``.yml``) or JSON (any other name). The one reader.

Every file of settings goes through here: the run-config file (``--config``, ``$RNNSTREAM_CONFIG``), the
Kafka client files (``--kafka-config``, ``$RNNSTREAM_KAFKA_CONFIG``) and the training config of
``rnnstream train --config``. So they accept the same formats and say the same one line about a file they
cannot use: :class:`ConfigError` naming the file and, for a malformed one, the line. :func:`validated`
checks a document against pydantic dataclasses and says the first problem in the same one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnnstream.rnn_core.config import ConfigError


def read_config_document(path: str | os.PathLike[str], missing_hint: str = "") -> Any:
    """The parsed document of ``path`` (None for an empty file); one-line :class:`ConfigError` otherwise.

    ``missing_hint`` ends the message for a file that does not exist (e.g. how to name another one).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        hint = f" ({missing_hint})" if missing_hint else ""
        raise ConfigError(f"config file {p} does not exist{hint}") from None
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


def read_config_mapping(
    path: str | os.PathLike[str], expected: str, missing_hint: str = ""
) -> dict[str, Any]:
    """The mapping in ``path`` (an empty file: an empty mapping); ``expected`` is the message when the file
    holds something else (``"a Kafka client file must be a mapping of settings"``)."""
    data = read_config_document(path, missing_hint)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {expected}, got a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: keys must be strings, got {bad[0]!r}")
    return data


def validated(kind: type, data: Any, source: str, allowed: Mapping[str, tuple[str, ...]]) -> Any:
    """``data`` (a parsed document) as ``kind`` (a pydantic dataclass), validated by pydantic; the first
    problem as one :class:`ConfigError` line: ``source``, the dotted key, what is wrong and what is allowed.

    ``allowed`` names the keys of each place of the document for "unknown key" lines: ``""`` for the top
    level, ``"serving"`` for a section, ``"pipelines.*"`` for every entry of a mapping section.
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_one_line(exc, allowed)}") from None


_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true/false",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
    "list_type": "a list",
}


def _one_line(exc: Any, allowed: Mapping[str, tuple[str, ...]]) -> str:
    """pydantic's first error as the line a user reads: where (dotted keys), what is wrong, what is
    allowed."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(str(part) for part in error["loc"])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    where = f"`{loc[0]}`" if len(loc) == 1 else ".".join(loc)
    got = f"got {value!r} ({type(value).__name__})"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = ".".join(loc[:-1])
        place = f"{loc[0]}.*" if len(loc) == 3 and f"{loc[0]}.*" in allowed else parent
        names = ", ".join(sorted(allowed.get(place, ())))
        prefix = f"{parent}." if parent else ""
        return f"unknown key {prefix}{loc[-1]!r} (allowed: {names})"
    if kind in _KINDS:
        return f"{where} must be {_KINDS[kind]}, {got}"
    if kind == "missing":
        return f"{where} is missing"
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        op, bound = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
                     "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}[kind]  # fmt: skip
        return f"{where} must be {op} {ctx[bound]}, got {value!r}"
    if kind == "literal_error":
        return f"{where} must be one of {ctx['expected'].replace(chr(39), '')}, got {value!r}"
    if kind == "value_error":
        return f"{where}: {ctx.get('error', error['msg'])}"
    return f"{where}: {error['msg']}"
