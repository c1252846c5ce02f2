"""Reading a settings file: YAML (``.yaml``/``.yml``) or JSON (any other name), holding one mapping.

Shared by the commands' ``--config`` files and the Kafka client settings files, so both accept the same
formats and say the same things about a file they cannot use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_mapping_file(path: Path, name: str, holds: str, error: Callable[[str], Exception]) -> dict[str, Any]:
    """The mapping in ``path`` (an empty file is an empty mapping).

    ``name`` is how messages call the file (``"--config serve.yaml"``), ``holds`` ends the "not a mapping"
    message (``"of settings"``); a file that cannot be read or does not hold a mapping raises
    ``error(message)``. Malformed JSON/YAML raises the parser's own error.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"cannot read {name}: {exc.strerror or exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text or "{}")
    if not isinstance(data, dict):
        raise error(f"{name} must hold a mapping {holds}")
    return data
