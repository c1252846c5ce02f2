"""Record each hot swap on the registry version that now serves (best effort, off the swap's path)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rnnstream.workers.worker_config import ModelHandle

log = logging.getLogger(__name__)

_REGISTRY_URI = "models:/"  # a registry locator (rnnstream.workers.serving.MODELS_URI; no import cycle)


def note_swap_in_registry(old: ModelHandle, new: ModelHandle, record: dict[str, Any]) -> bool:
    """Tag the registry version that now serves with how it was swapped in (``record_swap``).

    Only for ``models:/`` locators (a folder has no registry entry). Best effort: returns False and logs
    when MLflow cannot be reached, never raising, so a registry outage cannot fail a swap.
    """
    if not new.locator.startswith(_REGISTRY_URI):
        return False
    try:
        from rnnstream.workers.model_registry import parse_model_uri, pipeline_of, record_swap
        from rnnstream.workers.tracking import resolve_store

        name, _, version = parse_model_uri(new.locator)
        old_name, _, old_version = (
            parse_model_uri(old.locator) if old.locator.startswith(_REGISTRY_URI) else ("", None, None)
        )
        details = {k: record[k] for k in ("switch_offsets", "warm_from_offsets", "warmup_events", "time")}
        record_swap(
            resolve_store(),
            pipeline_of(name),
            old_version if old_name == name else old.version,
            str(version),
            details,
        )
        return True
    except Exception as exc:
        log.warning("could not record the swap to %s in MLflow: %s", new.version, exc)
        return False


def note_swap_in_background(
    pipeline: str, old: ModelHandle, new: ModelHandle, record: dict[str, Any]
) -> None:
    """:func:`note_swap_in_registry` on a daemon thread: a slow or unreachable MLflow never delays a swap."""
    if not new.locator.startswith(_REGISTRY_URI):
        return
    threading.Thread(
        target=note_swap_in_registry,
        args=(old, new, dict(record)),
        name=f"record-swap-{pipeline}",
        daemon=True,
    ).start()
