"""Coordinator: one named Ray actor per pipeline that owns the partition -> worker map and the serving model.

- assigns the events topic's partitions to N :class:`ScoringWorkerActor` slots (manual assignment, never a
  consumer-group rebalance): slot ``i`` of ``n`` owns the partitions ``p`` with ``p % n == i``;
- watches health: a worker whose process died comes back (``max_restarts=-1``) owning nothing; the watch
  thread sees that and hands it its partitions again, which it restores from their newest checkpoints;
- moves partitions (``scale``) only after the old owner committed and wrote a final checkpoint of them
  (``set_partitions`` / ``stop`` on the old owner first, then on the new one), or, when the old owner is
  gone, after fencing its transactional id so nothing it left open can commit;
- keeps the serving model version and hot-swaps it (``swap_model``): every worker loads the new version as a
  challenger that warms its own states on live traffic (shadow scoring) while the old one serves; once every
  worker has seen ``warmup_events`` events, each switches at its next commit boundary and checkpoints the new
  states there. An optional ``model_probe`` (e.g. the registry's champion alias) is polled to trigger swaps.

All public methods are Ray calls; the actor is threaded (``max_concurrency``), one lock serializes changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rnnstream.workers.scoring_worker_actor import ScoringWorkerActor, fence_slot
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig

log = logging.getLogger(__name__)

NAMESPACE = "rnnstream"
_REGISTRY_URI = "models:/"  # a registry locator (rnnstream.workers.serving.MODELS_URI; no import cycle)


def coordinator_name(pipeline: str) -> str:
    """The Ray actor name of a pipeline's coordinator (namespace ``rnnstream``)."""
    return f"rnnstream-coordinator-{pipeline}"


def plan_assignment(num_partitions: int, num_workers: int) -> dict[int, list[int]]:
    """Slot -> partitions: partition ``p`` goes to slot ``p % num_workers``."""
    return {s: [p for p in range(num_partitions) if p % num_workers == s] for s in range(num_workers)}


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


def _note_swap_in_background(
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
        self.model_probe = model_probe
        self.probe_every_s = probe_every_s
        self.warmup_events = int(warmup_events)
        self.shadow = shadow
        self.model_loader = model_loader  # how workers load a locator (None: serving.load_model)
        self.workers: dict[int, Any] = {}
        self.assignment: dict[int, list[int]] = {}
        self.incarnations: dict[int, str] = {}
        self.restarts: dict[int, int] = {}
        self.swaps: list[dict[str, Any]] = []
        self.swapping = False
        self.shadow_handle: ModelHandle | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._target = int(num_workers)
        self._started = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> dict[int, list[int]]:
        """Start the workers and hand out the partitions; returns the assignment."""
        with self._lock:
            if not self._started:
                self._scale_locked(self._target)
                self._started = True
        for target, name in ((self._watch, "health"), (self._probe_loop, "model-probe")):
            if name == "model-probe" and self.model_probe is None:
                continue
            t = threading.Thread(target=target, name=f"coordinator-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return dict(self.assignment)

    def stop(self) -> dict[int, int]:
        """Stop every worker cleanly (commit + final checkpoints); returns each partition's next offset."""
        import ray

        self._stop.set()
        out: dict[int, int] = {}
        with self._lock:
            refs = {s: w.stop.remote() for s, w in self.workers.items()}
            for s, ref in refs.items():
                try:
                    out.update(ray.get(ref, timeout=120))
                except Exception as exc:
                    log.warning("worker %d did not stop cleanly: %s", s, exc)
                    fence_slot(self.config, s)
                ray.kill(self.workers[s], no_restart=True)
            self.workers.clear()
            self.assignment.clear()
        return out

    # --------------------------------------------------------------------------------------------- scaling

    def scale(self, num_workers: int) -> dict[int, list[int]]:
        """Change the number of workers while running; partitions move with their final checkpoints."""
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        with self._lock:
            self._target = int(num_workers)
            self._scale_locked(self._target)
            return dict(self.assignment)

    def _scale_locked(self, n: int) -> None:
        import ray

        new = plan_assignment(self.num_partitions, n)
        # 1. every current owner gives up what it loses (commit + final checkpoint) before anyone takes it
        refs = {}
        for s, w in self.workers.items():
            keep = new.get(s, [])
            if set(self.assignment.get(s, [])) - set(keep):
                refs[s] = w.stop.remote() if s >= n else w.set_partitions.remote(keep, self.model)
        for s, ref in refs.items():
            try:
                ray.get(ref, timeout=120)
            except Exception as exc:  # dead or stuck: its partitions move from their last checkpoints
                log.warning("worker %d did not release cleanly (%s); replacing it", s, exc)
                ray.kill(self.workers[s], no_restart=s >= n)  # a restarted slot fences its old producer
                if s >= n:
                    fence_slot(self.config, s)
        # 2. retire removed slots
        for s in [s for s in self.workers if s >= n]:
            try:
                if s not in refs:
                    ray.get(self.workers[s].stop.remote(), timeout=120)
            except Exception:
                fence_slot(self.config, s)
            ray.kill(self.workers[s], no_restart=True)
            del self.workers[s]
            self.assignment.pop(s, None)
            self.incarnations.pop(s, None)
        # 3. start new slots, then give every slot its partitions
        for s in range(n):
            if s not in self.workers:
                self.workers[s] = self._new_worker(s)
                self.restarts.setdefault(s, 0)
        refs = {s: self.workers[s].set_partitions.remote(new[s], self.model) for s in range(n)}
        for s, ref in refs.items():
            ray.get(ref, timeout=300)
            self.assignment[s] = list(new[s])
        for s in range(n):
            self.incarnations[s] = ray.get(self.workers[s].status.remote(), timeout=60)["incarnation"]

    def _new_worker(self, slot: int) -> Any:
        import ray

        actor_cls = ray.remote(ScoringWorkerActor)
        return actor_cls.options(
            max_restarts=-1, max_task_retries=0, max_concurrency=4, **self.worker_options
        ).remote(slot, self.config, self.model_loader)

    # ---------------------------------------------------------------------------------------------- health

    def _watch(self) -> None:
        import ray

        while not self._stop.wait(self.health_every_s):
            with self._lock:
                if self._stop.is_set():
                    return
                for s, w in list(self.workers.items()):
                    try:
                        st = ray.get(w.status.remote(), timeout=2.0)
                    except Exception:
                        continue  # restarting (or busy): look again next round
                    stalled = st.get("heartbeat_age_s", 0.0) > self.stall_timeout_s
                    if not st.get("alive", True) or (st["partitions"] and stalled):
                        log.warning(
                            "worker %d loop ended or stalled (%s); restarting it", s, st.get("last_error")
                        )
                        ray.kill(w, no_restart=False)
                        continue
                    want = self.assignment.get(s, [])
                    if st["incarnation"] != self.incarnations.get(s) or sorted(st["partitions"]) != sorted(
                        want
                    ):
                        if st["incarnation"] != self.incarnations.get(s):
                            self.restarts[s] = self.restarts.get(s, 0) + 1
                            log.warning("worker %d restarted; re-assigning %s", s, want)
                        try:
                            ray.get(w.set_partitions.remote(want, self.model), timeout=120)
                            if self.shadow_handle is not None and st["challenger_version"] is None:
                                ray.get(w.prepare_model.remote(self.shadow_handle, True), timeout=120)
                            self.incarnations[s] = st["incarnation"]
                        except Exception as exc:
                            log.warning("re-assigning worker %d failed: %s", s, exc)

    # ---------------------------------------------------------------------------------------- model swap

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.probe_every_s):
            try:
                handle = self.model_probe() if self.model_probe else None
            except Exception as exc:
                log.warning("model probe failed: %s", exc)
                continue
            if handle is not None and handle.version != self.model.version and not self.swapping:
                try:
                    self.swap_model(handle)
                except Exception as exc:
                    log.warning("hot swap to %s failed: %s", handle.version, exc)

    def shadow_model(self, handle: ModelHandle | None) -> dict[int, int]:
        """Score ``handle`` beside the champion, with its own states, into ``<pipeline>.scores.shadow``
        (a challenger watched live, never serving); ``None`` stops it. Returns each partition's start."""
        import ray

        with self._lock:
            self.shadow_handle = handle
            if handle is None:
                ray.get([w.drop_challenger.remote() for w in self.workers.values()])
                return {}
            start: dict[int, int] = {}
            for part in ray.get([w.prepare_model.remote(handle, True) for w in self.workers.values()]):
                start.update(part)
            return start

    def swap_model(
        self,
        handle: ModelHandle,
        warmup_events: int | None = None,
        shadow: bool | None = None,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Hot-swap to ``handle``: warm a challenger on live traffic, then switch every worker at a commit
        boundary. Returns ``{"from", "to", "switch_offsets": {partition: offset}, "warmup_events"}``."""
        import ray

        warm = self.warmup_events if warmup_events is None else int(warmup_events)
        shadow = self.shadow if shadow is None else shadow
        with self._lock:
            self.swapping = True
            try:
                old = self.model
                warm_from: dict[int, int] = {}
                for part in ray.get([w.prepare_model.remote(handle, shadow) for w in self.workers.values()]):
                    warm_from.update(part)
                deadline = time.monotonic() + timeout_s
                while True:
                    seen = ray.get([w.challenger_events.remote() for w in self.workers.values()])
                    if min(seen) >= warm:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"challenger saw only {seen} events in {timeout_s:.0f} s")
                    time.sleep(0.05)
                self.model = handle
                if self.shadow_handle is not None and self.shadow_handle.version == handle.version:
                    self.shadow_handle = None  # the shadowed version now serves
                offsets: dict[int, int] = {}
                for part in ray.get([w.switch_model.remote() for w in self.workers.values()]):
                    offsets.update(part)
                if self.shadow_handle is not None:  # the swap used the challenger slot: shadow again
                    ray.get([w.prepare_model.remote(self.shadow_handle, True) for w in self.workers.values()])
                record = {
                    "from": old.version,
                    "to": handle.version,
                    "switch_offsets": offsets,
                    "warm_from_offsets": warm_from,
                    "warmup_events": seen,
                    "time": time.time(),
                }
                self.swaps.append(record)
                _note_swap_in_background(self.config.pipeline, old, handle, record)
                return record
            finally:
                self.swapping = False

    # ---------------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The pipeline's serving state and every worker's metrics (a silent worker shows an error)."""
        import ray

        workers = []
        refs = {s: w.metrics.remote() for s, w in list(self.workers.items())}
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
            "swaps": list(self.swaps),
            "workers": workers,
        }

    def worker_pids(self) -> dict[int, int]:
        import ray

        return {s: ray.get(w.pid.remote(), timeout=30) for s, w in self.workers.items()}

    def final_checkpoint(self) -> dict[int, int]:
        """Commit and checkpoint every partition now (workers keep running)."""
        import ray

        out: dict[int, int] = {}
        with self._lock:
            for part in ray.get([w.final_checkpoint.remote() for w in self.workers.values()]):
                out.update(part)
        return out
