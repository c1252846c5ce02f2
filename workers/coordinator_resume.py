"""How a :class:`~rnnstream.workers.coordinator.Coordinator` that Ray restarted picks up where it was.

It reads its :class:`~rnnstream.workers.control_record.ControlRecord`, finds the named workers, takes each
one's partitions and incarnation from the worker's own report (a worker that does not answer is fenced and
restarted first: it may still own partitions and commit them), then finishes what the restart interrupted:
a swap that was switching switches every worker that still has the challenger, a swap still warming is
abandoned (every challenger dropped, the reason recorded), and an unfinished rescale is completed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rnnstream.workers.control_plan import resumed_ownership
from rnnstream.workers.control_record import SwapInProgress
from rnnstream.workers.model_swap import drop_all
from rnnstream.workers.scoring_worker_actor import fence_slot
from rnnstream.workers.worker_slots import report_of

if TYPE_CHECKING:
    from rnnstream.workers.coordinator import Coordinator

log = logging.getLogger("rnnstream.workers.coordinator")


def reconstructed() -> bool:
    """True inside an actor that Ray restarted (its constructor runs again after a crash)."""
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:
        return False


def resume_from_record(coord: Coordinator) -> None:
    """After Ray restarted ``coord``: read the record, find the workers, finish what was under way."""
    with coord._lock:
        record = coord._record_file.read()
        if record is None or record.stopped:
            log.warning("restarted without a control record to resume from; waiting for start()")
            return
        coord.model, coord._target, coord.generation = record.serving, record.num_workers, record.generation
        coord.shadow_handle, coord.swaps = record.shadow, list(record.swaps)
        coord.swap = record.swap  # kept in the record until finished below (a second kill finds it again)
        if not take_ownership(coord):
            return  # stopped meanwhile
        coord._persist(resumes=record.resumes + 1)
        log.warning("coordinator resumed: model %s, workers %s", coord.model.version, sorted(coord.workers))
        if record.swap is not None:
            try:
                finish_interrupted_swap(coord, record.swap)
            except Exception:  # the watch must still start: it restarts and re-arms the workers
                log.exception("finishing the interrupted swap to %s failed", record.swap.to.version)
        try:
            coord._scale_locked(coord._target)  # completes a rescale the restart interrupted
        except Exception as exc:
            log.warning("finishing the interrupted rescale failed (the watch retries): %s", exc)
        coord._started = True
    coord._start_threads()


def take_ownership(coord: Coordinator, retry_s: float = 5.0) -> bool:
    """Take each worker's partitions from its own report (:func:`resumed_ownership`); a worker that does not
    answer may still score and commit what it owns, so it is fenced and restarted (it comes back owning
    nothing) before anything moves. While one can be neither asked nor fenced (the broker unreachable), ask
    again every ``retry_s``: nothing moves meanwhile. False when the coordinator was stopped meanwhile."""
    while True:
        statuses = {s: coord.workers.status(s, timeout=30.0) for s in coord.workers.find_running()}
        owned, silent = resumed_ownership(
            [report_of(s, st, coord.stall_timeout_s) for s, st in statuses.items()]
        )
        unfenced = [s for s in silent if not fence_slot(coord.config, s)]
        if not unfenced:
            break
        log.warning("workers %s neither answer nor can be fenced; asking again in %.0f s", unfenced, retry_s)
        if coord._stop.wait(retry_s):
            return False
    for s, st in statuses.items():
        if s in silent:
            log.warning("worker %d did not answer; fenced, restarting it (it comes back owning nothing)", s)
            coord.workers.restart(s)
            coord.last_answer[s] = time.monotonic()
        coord.assignment[s] = owned[s]
        coord.incarnations[s] = st["incarnation"] if st else ""
        coord.restarts.setdefault(s, 0)
    return True


def finish_interrupted_swap(coord: Coordinator, swap: SwapInProgress) -> None:
    """A swap found in the record: switching -> every worker switches; warming -> abandoned."""
    import ray

    if swap.phase == "switching":  # some workers may have switched: every one switches
        coord._persist(model=swap.to)
        for s, w in coord.workers.items():
            st = coord.workers.status(s, timeout=30.0) or {}
            if st.get("challenger_version") == swap.to.version:
                ray.get(w.switch_model.remote(), timeout=120)
        coord._record_swap({"from": None, "to": swap.to.version, "resumed": True, "time": time.time()})
        return
    drop_all(coord.workers)
    coord._record_swap(
        {"to": swap.to.version, "error": "coordinator restarted during the warm-up", "time": time.time()}
    )
