"""One health round of a :class:`~rnnstream.workers.coordinator.Coordinator`: ask every worker how it is and
act on :func:`~rnnstream.workers.control_plan.decide_worker`'s answer.

A worker silent for longer than the stall timeout is fenced and restarted; a dead or stalled one is
restarted; a restarted one (or one owning other partitions than assigned) gets its partitions again, and,
while a swap or a shadow is under way, its challenger; never one that another worker still reports owning
(:func:`~rnnstream.workers.control_plan.held_elsewhere`: that one drops it first, or is restarted).
Partitions reported by more than one owner are counted and logged. Runs under the coordinator's lock.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rnnstream.workers.control_plan import WorkerAction, decide_worker, held_elsewhere, ownership_conflicts
from rnnstream.workers.scoring_worker_actor import fence_slot
from rnnstream.workers.worker_config import ModelHandle
from rnnstream.workers.worker_slots import report_of

if TYPE_CHECKING:
    from rnnstream.workers.coordinator import Coordinator

log = logging.getLogger("rnnstream.workers.coordinator")


def guarded_health_round(coord: Coordinator) -> None:
    """One :func:`health_round` that never ends the watch: an error (e.g. Ray refusing a restart) is logged
    with its traceback and counted in ``coord.health_errors``, and the next round tries again."""
    try:
        health_round(coord)
    except Exception:
        coord.health_errors += 1
        log.exception("health round failed (the next one retries)")


def health_round(coord: Coordinator) -> None:
    """Check every worker once and restart, fence or re-assign those that need it (see the module doc)."""
    import ray

    reports = []
    now = time.monotonic()
    wanted = wanted_challenger(coord)
    challenger = wanted[0].version if wanted is not None else None
    workers = coord.workers
    slots = workers.items()
    for s, _ in slots:
        st = workers.status(s, timeout=2.0)
        if st is not None:
            coord.last_answer[s] = now
        reports.append(report_of(s, st, coord.stall_timeout_s))
    for (s, w), report in zip(slots, reports, strict=True):
        decision = decide_worker(report, coord.assignment.get(s, []), coord.incarnations.get(s), challenger)
        silent_for = now - coord.last_answer.setdefault(s, now)
        if decision.action is WorkerAction.WAIT and silent_for > coord.stall_timeout_s:
            log.warning("worker %d silent for %.0f s; fencing and restarting it", s, silent_for)
            if fence_slot(coord.config, s):
                workers.restart(s)
                coord.last_answer[s] = now
            continue
        if decision.action is WorkerAction.RESTART:
            log.warning("worker %d %s (%s); restarting it", s, decision.reason, report)
            workers.restart(s)
        elif decision.action is WorkerAction.REASSIGN:
            want = coord.assignment.get(s, [])
            held = held_elsewhere(s, want, reports)
            if held:  # never a second owner: the other one is told to drop them first
                log.warning("worker %d is to take partitions still owned elsewhere (%s); next round", s, held)
                continue
            if decision.reason == "restarted":
                coord.restarts[s] = coord.restarts.get(s, 0) + 1
                log.warning("worker %d restarted; re-assigning %s", s, want)
            try:
                ray.get(w.set_partitions.remote(want, coord.model), timeout=120)
                if decision.rearm_challenger and wanted is not None:
                    start = ray.get(w.prepare_model.remote(*wanted), timeout=120)
                    if coord.swap is not None:
                        coord._warm_from.update(start)  # its challenger warms from here
                coord.incarnations[s] = report.incarnation
            except Exception as exc:
                log.warning("re-assigning worker %d failed: %s", s, exc)
    conflicts = ownership_conflicts(reports)
    if conflicts:
        coord.ownership_conflicts += 1
        log.error("partitions with more than one owner: %s", conflicts)


def wanted_challenger(coord: Coordinator) -> tuple[ModelHandle, bool] | None:
    """The challenger every worker should have now and whether it writes to the shadow topic (None: none,
    or a swap still loading its challengers for the first time: that is not the watch's to do)."""
    if coord.swap is not None:
        return (coord.swap.to, coord.swap.shadow) if coord._armed else None
    return (coord.shadow_handle, True) if coord.shadow_handle is not None else None
