"""Coordinator: one named Ray actor per pipeline that owns the partition -> worker map and the serving model.

- assigns the events topic's partitions to N :class:`ScoringWorkerActor` slots (manual assignment, never a
  consumer-group rebalance; the rule is :func:`~rnnstream.workers.control_plan.plan_assignment`);
- survives its own death: it runs with ``max_restarts=-1`` and keeps what it cannot lose in a
  :class:`~rnnstream.workers.control_record.ControlRecord` beside the checkpoints. The workers are named,
  detached actors, so they keep scoring while it is away; a restarted coordinator reads the record, finds
  the workers by name, takes each partition's owner from the workers' own reports and goes on (finishing a
  rescale, finishing or abandoning a swap: :mod:`~rnnstream.workers.coordinator_resume`);
- watches health (:func:`~rnnstream.workers.control_plan.decide_worker`): a dead, stalled or silent worker
  is restarted, a restarted one gets its partitions again from their newest checkpoints
  (:mod:`~rnnstream.workers.health_round`);
- moves partitions (``scale``) only after the old owner committed and wrote a final checkpoint of them,
  or, when it cannot (dead, stuck, SIGSTOPped, cut off), after its transactional id was fenced, so nothing
  it does later can commit;
- hot-swaps the serving model (``swap_model``): every worker loads the new version as a challenger that
  warms its own states on live traffic (shadow scoring) while the old one serves; once every worker's
  challenger saw ``warmup_events`` events, each switches at its next commit boundary and checkpoints the new
  states there. The lock is held only for each step, never through the warm-up; a failed or timed-out
  swap drops every challenger and says why. An optional ``model_probe`` (e.g. the registry's champion
  alias) is polled to trigger swaps.

All public methods are Ray calls; the actor is threaded (``max_concurrency``), one lock serializes changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rnnstream.workers.control_plan import (
    SwapStep,
    decide_swap,
    must_fence_before_handover,
    owned_after_release,
    plan_handover,
)
from rnnstream.workers.control_record import (
    KEEP_SWAPS,
    RECORDED_ATTRIBUTES,
    ControlRecord,
    ControlRecordFile,
    SwapInProgress,
)
from rnnstream.workers.coordinator_resume import reconstructed, resume_from_record
from rnnstream.workers.health_round import guarded_health_round
from rnnstream.workers.model_swap import (
    SwapFailed,
    challenger_progress,
    drop_all,
    one_line,
    prepare_all,
    refused,
    switch_all,
)
from rnnstream.workers.scoring_worker_actor import fence_slot
from rnnstream.workers.swap_registry_note import note_swap_in_background
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT, ModelHandle, WorkerConfig
from rnnstream.workers.worker_slots import WorkerSlots

log = logging.getLogger(__name__)


def coordinator_name(pipeline: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """The Ray actor name of a release's coordinator of ``pipeline`` (namespace ``rnnstream``): two releases
    (deployment names) may serve one pipeline on one Ray cluster."""
    return f"rnnstream-coordinator-{deployment}-{pipeline}"


class Coordinator:
    """The control plane of one pipeline's scoring (see the module docstring)."""

    def __init__(
        self,
        config: WorkerConfig,
        model: ModelHandle,
        num_workers: int,
        num_partitions: int,
        *,
        worker_options: dict[str, Any] | None = None,
        health_every_s: float = 0.25,
        stall_timeout_s: float = 60.0,
        release_timeout_s: float = 120.0,
        model_probe: Callable[[], ModelHandle | None] | None = None,
        probe_every_s: float = 10.0,
        warmup_events: int = 1000,
        shadow: bool = False,
        model_loader: Callable[[str], Any] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.config = config
        self.model = model
        self.num_partitions = int(num_partitions)
        self.worker_options = {"num_cpus": 0, **(worker_options or {})}
        self.health_every_s = health_every_s
        self.stall_timeout_s = stall_timeout_s
        self.release_timeout_s = release_timeout_s
        self.model_probe = model_probe
        self.probe_every_s = probe_every_s
        self.warmup_events = int(warmup_events)
        self.shadow = shadow
        self.workers = WorkerSlots(config, self.worker_options, model_loader, release_timeout_s)
        self.assignment: dict[int, list[int]] = {}
        self.incarnations: dict[int, str] = {}
        self.restarts: dict[int, int] = {}
        self.last_answer: dict[int, float] = {}
        self.swaps: list[dict[str, Any]] = []
        self.swap: SwapInProgress | None = None
        self.shadow_handle: ModelHandle | None = None
        self.generation = 0
        self.resumes = 0
        self.ownership_conflicts = self.health_errors = 0
        self._refused_version: str | None = None
        self._armed = False  # every worker got the swap's challenger once (then the watch re-arms restarts)
        self._warm_from: dict[int, int] = {}  # the swap's challenger start offset per partition
        self._record_file = ControlRecordFile(config)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._target = int(num_workers)
        self._started = False
        self._threads: list[threading.Thread] = []
        if reconstructed():
            resume = threading.Thread(target=resume_from_record, args=(self,), name="coordinator-resume")
            resume.daemon = True
            resume.start()

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> dict[int, list[int]]:
        """Start the workers and hand out the partitions; returns the assignment."""
        with self._lock:
            if not self._started:
                previous = self._record_file.read()
                self.generation = previous.generation if previous else 0  # generations only go up
                self.workers.retire_leftovers()
                self._scale_locked(self._target)
                self._started = True
        self._start_threads()
        return dict(self.assignment)

    def _start_threads(self) -> None:
        for target, name in ((self._watch, "health"), (self._probe_loop, "model-probe")):
            if name == "model-probe" and self.model_probe is None:
                continue
            t = threading.Thread(target=target, name=f"coordinator-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> dict[int, int]:
        """Stop every worker cleanly (commit + final checkpoints); returns each partition's next offset."""
        self._stop.set()
        out: dict[int, int] = {}
        with self._lock:
            for s in list(self.workers):
                out.update(self.workers.stop(s))
            self.assignment.clear()
            self._persist(stopped=True)
        return out

    def _persist(self, stopped: bool = False, **changes: Any) -> None:
        """Write the control record with ``changes`` (any of its ``RECORDED_ATTRIBUTES``: ``swap``,
        ``model``, ``generation``, ...) and only then set them: the status reads without the lock, so what it
        shows is already in the record, and a kill at any moment loses nothing it showed."""
        unknown = set(changes) - set(RECORDED_ATTRIBUTES)
        if unknown:
            raise AttributeError(f"not recorded in the control record: {sorted(unknown)}")
        state = {name: changes.get(name, getattr(self, name)) for name in RECORDED_ATTRIBUTES}
        self._record_file.write(ControlRecord.of_coordinator(self.config.pipeline, state, stopped))
        for name, value in changes.items():
            setattr(self, name, value)

    # --------------------------------------------------------------------------------------------- scaling

    def scale(self, num_workers: int) -> dict[int, list[int]]:
        """Change the number of workers while running; partitions move with their final checkpoints."""
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if not self._started:  # start() would retire the workers this started, as leftovers
            raise RuntimeError(
                "the coordinator is not ready (starting, or resuming after a restart): "
                "retry once its status shows ready"
            )
        with self._lock:
            self._target = int(num_workers)
            self._scale_locked(self._target)  # records the new target before any partition moves
            return dict(self.assignment)

    def _scale_locked(self, n: int) -> None:
        import ray

        plan = plan_handover(self.assignment, sorted(self.workers), self.num_partitions, n)
        changing = bool(plan.releases or plan.retire or plan.start) or any(
            sorted(self.assignment.get(s, [])) != plan.target[s] for s in range(n)
        )
        if changing:
            self._persist(generation=self.generation + 1)
        # 1. every current owner gives up what it loses (commit + final checkpoint) before anyone takes it
        refs = {s: self.workers[s].set_partitions.remote(k, self.model) for s, k in plan.releases.items()}
        refs.update({s: self.workers[s].stop.remote() for s in plan.retire})
        for s, ref in refs.items():
            try:
                ray.get(ref, timeout=self.release_timeout_s)
                clean = True
            except Exception as exc:
                log.warning("worker %d did not release cleanly (%s); fencing and replacing it", s, exc)
                clean = False
            if must_fence_before_handover(clean, stopped=s in plan.retire):
                if not fence_slot(self.config, s):
                    raise RuntimeError(f"worker {s} could not be fenced; its partitions stay where they are")
                if s < n:
                    self.workers.restart(s)  # it comes back owning nothing
            self.assignment[s] = owned_after_release(plan, s, clean)  # what it owns now, not its target
        # 2. retire removed slots
        for s in plan.retire:
            self.workers.remove(s)
            self.assignment.pop(s, None)
            self.incarnations.pop(s, None)
        # 3. start new slots, then give every slot its partitions
        for s in plan.start:
            self.workers.start(s)
            self.restarts.setdefault(s, 0)
        # (no partition that moves has an owner now; one that fails to take its own is left to the watch,
        # which sees it own other partitions than assigned and assigns them again)
        self.assignment = {s: list(plan.target[s]) for s in range(n)}
        refs = {s: self.workers[s].set_partitions.remote(plan.target[s], self.model) for s in range(n)}
        for s, ref in refs.items():
            try:
                ray.get(ref, timeout=300)
                self.incarnations[s] = ray.get(self.workers[s].status.remote(), timeout=60)["incarnation"]
            except Exception as exc:
                log.warning("worker %d did not take %s (the watch retries): %s", s, plan.target[s], exc)
            self.last_answer[s] = time.monotonic()
        self._persist()

    # ---------------------------------------------------------------------------------------------- health

    def _watch(self) -> None:
        while not self._stop.wait(self.health_every_s):
            with self._lock:
                if self._stop.is_set():
                    return
                guarded_health_round(self)

    # ---------------------------------------------------------------------------------------- model swap

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.probe_every_s):
            try:
                handle = self.model_probe() if self.model_probe else None
            except Exception as exc:
                log.warning("model probe failed: %s", exc)
                continue
            if (
                handle is not None
                and handle.version not in (self.model.version, self._refused_version)
                and self.swap is None
            ):
                try:
                    self.swap_model(handle)
                except Exception as exc:
                    log.warning("hot swap to %s failed: %s", handle.version, exc)

    def shadow_model(self, handle: ModelHandle | None) -> dict[int, int]:
        """Score ``handle`` beside the champion, with its own states, into ``<pipeline>.scores.shadow``
        (a challenger watched live, never serving); ``None`` stops it. Returns each partition's start."""

        with self._lock:
            self._persist(shadow_handle=handle)
            if handle is None:
                drop_all(self.workers)
                return {}
            return prepare_all(self.workers, handle, True)

    def swap_model(
        self,
        handle: ModelHandle,
        warmup_events: int | None = None,
        shadow: bool | None = None,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Hot-swap to ``handle``: warm a challenger on live traffic, then switch every worker at a commit
        boundary. Returns ``{"from", "to", "switch_offsets": {partition: offset}, "warmup_events", ...}``;
        raises (after dropping every challenger; the champion goes on) when the swap fails or times out."""

        warm = self.warmup_events if warmup_events is None else int(warmup_events)
        shadow = self.shadow if shadow is None else shadow
        with self._lock:
            if self.swap is not None:
                raise RuntimeError(f"a swap to {self.swap.to.version} is under way")
            self._persist(swap=SwapInProgress(handle, "warming", warm, shadow, time.time()))
            old = self.model
        switching = False
        try:
            self._warm_from = prepare_all(self.workers, handle, shadow)
            self._armed = True
            started = time.monotonic()
            while True:  # the lock is free meanwhile: the watch restarts and re-arms workers
                seen = challenger_progress(self.workers, warm)
                decision = decide_swap(seen, warm, time.monotonic() - started, timeout_s)
                if decision.step is SwapStep.SWITCH:
                    break
                if decision.step is SwapStep.ABANDON:
                    raise TimeoutError(decision.reason)
                time.sleep(0.05)
            with self._lock:  # from here the swap is committed: every worker switches, or restarts on it
                switching = True
                self._persist(
                    swap=SwapInProgress(handle, "switching", warm, shadow, self.swap.started_s),
                    model=handle,
                    generation=self.generation + 1,
                )
                record = switch_all(self.workers, old, handle, self.generation)
                record["warm_from_offsets"] = dict(self._warm_from)
                record["warmup_events"] = {str(s): n for s, n in seen.items()}
                if self.shadow_handle is not None and self.shadow_handle.version == handle.version:
                    self.shadow_handle = None  # the shadowed version now serves
                if self.shadow_handle is not None:  # the swap used the challenger slot: shadow again
                    prepare_all(self.workers, self.shadow_handle, True)
                self._record_swap(record)
            note_swap_in_background(self.config.pipeline, old, handle, record)
            return record
        except Exception as exc:
            if switching:
                raise
            reason = one_line(exc)
            with self._lock:
                drop_all(self.workers)
                refusal = refused(exc)
                if refusal:
                    self._refused_version = handle.version  # not tried again by the probe until it changes
                self._record_swap(
                    {"to": handle.version, "error": reason, "refused": refusal, "time": time.time()}
                )
            raise SwapFailed(
                f"swap to {handle.version} failed, {self.model.version} serves on: {reason}"
            ) from None
        finally:
            with self._lock:
                self._armed = False
                if self.swap is not None:
                    self._persist(swap=None)

    def _record_swap(self, record: dict[str, Any]) -> None:
        self._persist(swap=None, swaps=[*self.swaps, record][-KEEP_SWAPS:])

    # ---------------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The pipeline's serving state and every worker's metrics (a silent worker shows an error)."""
        import ray

        workers = []
        refs = {s: w.metrics.remote() for s, w in self.workers.items()}
        for s, ref in refs.items():
            try:
                m = ray.get(ref, timeout=5.0)
            except Exception as exc:
                m = {"slot": s, "error": f"{type(exc).__name__}"}
            m["restarts"] = self.restarts.get(s, 0)
            m["assigned"] = self.assignment.get(s, [])
            workers.append(m)
        return {
            "pipeline": self.config.pipeline,
            "model_version": self.model.version,
            "num_workers": len(self.workers),
            "num_partitions": self.num_partitions,
            "assignment": dict(self.assignment),
            "generation": self.generation,
            "coordinator_resumes": self.resumes,
            "ready": self._started,
            "ownership_conflicts": self.ownership_conflicts,
            "health_errors": self.health_errors,
            "swap_in_progress": None if self.swap is None else self.swap.to.version,
            "swaps": list(self.swaps),
            "workers": workers,
        }

    def worker_pids(self) -> dict[int, int]:
        import ray

        return {s: ray.get(w.pid.remote(), timeout=30) for s, w in self.workers.items()}

    def pid(self) -> int:
        import os

        return os.getpid()

    def final_checkpoint(self) -> dict[int, int]:
        """Commit and checkpoint every partition now (workers keep running)."""
        import ray

        out: dict[int, int] = {}
        with self._lock:
            for part in ray.get([w.final_checkpoint.remote() for _, w in self.workers.items()]):
                out.update(part)
        return out
