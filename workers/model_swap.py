"""The steps of a hot swap over a pipeline's workers (the coordinator sequences them; the rule of when to
switch or give up is :func:`~rnnstream.workers.control_plan.decide_swap`):

1. :func:`prepare_all`: every worker loads the new version as a challenger scoring the same events with
   its own fresh states (refused there, in one line, when it reads features the events lack);
2. :func:`challenger_progress`: how many events each worker's challenger has scored;
3. :func:`switch_all`: each worker makes its challenger champion at its next commit boundary and
   checkpoints the new states; or :func:`drop_all`: every challenger is dropped and the champion goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, fields
from typing import Any

from rnnstream.workers.archive_warmup import ArchiveWarmup
from rnnstream.workers.worker_config import ModelHandle
from rnnstream.workers.worker_slots import WorkerSlots

log = logging.getLogger(__name__)


class SwapFailed(RuntimeError):
    """A hot swap did not happen (every challenger was dropped; the champion serves on); says why."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a worker's error arrives wrapped by Ray: its cause is what counts)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = f"{type(exc).__name__}: {exc}".splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def refused(exc: BaseException) -> bool:
    """True when the worker refused the challenger itself (it reads features the events lack): trying the
    same version again cannot help."""
    from rnnstream.workers.scoring_worker import ModelIncompatible

    return isinstance(getattr(exc, "cause", exc), ModelIncompatible)


def prepare_all(workers: WorkerSlots, handle: ModelHandle, shadow: bool) -> dict[int, int]:
    """Load ``handle`` as every worker's challenger; returns each partition's warm-up start offset."""
    import ray

    start: dict[int, int] = {}
    for part in ray.get([w.prepare_model.remote(handle, shadow) for _, w in workers.items()]):
        start.update(part)
    return start


def challenger_progress(workers: WorkerSlots, warm: int) -> dict[int, int | None]:
    """Per slot, how many events its challenger scored (a slot owning nothing counts as ``warm``: it has
    nothing to learn; ``None``: no answer)."""
    out: dict[int, int | None] = {}
    for s in workers:
        st = workers.status(s, timeout=5.0)
        if st is None:
            out[s] = None
        elif not st["partitions"]:
            out[s] = warm
        else:
            out[s] = int(st["challenger_events"]) if st["challenger_version"] else 0
    return out


def switch_all(workers: WorkerSlots, old: ModelHandle, new: ModelHandle, generation: int) -> dict[str, Any]:
    """Every worker switches at its next commit boundary; returns the swap's record. A worker that fails
    here restarts on the new model from its checkpoints (the coordinator's watch re-assigns it)."""
    import ray

    offsets: dict[int, int] = {}
    warmed = cold = 0
    archive = ArchiveWarmup()
    failed = []
    for s, ref in {s: w.switch_model.remote() for s, w in workers.items()}.items():
        try:
            switched = ray.get(ref, timeout=120)
        except Exception as exc:
            log.warning("worker %d failed to switch (it restarts on %s): %s", s, new.version, exc)
            failed.append(s)
            continue
        offsets.update({int(p): int(o) for p, o in switched["offsets"].items()})
        warmed += switched["keys_warmed"]
        cold += switched["keys_cold"]
        archive += ArchiveWarmup(*(int(switched[f.name]) for f in fields(ArchiveWarmup)))
    return {
        "from": old.version,
        "to": new.version,
        "switch_offsets": offsets,
        "keys_warmed": warmed,
        "keys_cold": cold,
        **asdict(archive),  # of the warmed keys, those warmed from the archive (and what it did not hold yet)
        "failed_slots": failed,
        "generation": generation,
        "time": time.time(),
    }


def drop_all(workers: WorkerSlots) -> None:
    """Every worker drops its challenger (best effort per worker: a dead one has none after its restart)."""
    import ray

    for s, w in workers.items():
        try:
            ray.get(w.drop_challenger.remote(), timeout=60)
        except Exception as exc:
            log.warning("worker %d could not drop its challenger: %s", s, exc)
