"""The worker actors of one pipeline's deployment, by slot: :class:`WorkerSlots`.

Each slot is a named, detached Ray actor (``rnnstream-worker-<deployment>-<pipeline>-<slot>``, namespace
``rnnstream``, ``max_restarts=-1``): detached so it keeps scoring while its coordinator is being restarted
(an actor owned by the coordinator would die with it), named so a restarted coordinator finds it again.
This class starts, finds, stops (or, when a clean stop fails, fences) and kills them, and turns their
status answers into :class:`~rnnstream.workers.control_plan.WorkerReport` values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from rnnstream.workers.control_plan import WorkerReport
from rnnstream.workers.scoring_worker_actor import ScoringWorkerActor, fence_slot
from rnnstream.workers.worker_config import WorkerConfig

log = logging.getLogger(__name__)

NAMESPACE = "rnnstream"
MAX_SLOTS = 64  # how far a restarted coordinator looks for its workers' names


def worker_name(config: WorkerConfig, slot: int) -> str:
    """The Ray actor name of a worker slot (namespace ``rnnstream``): how a restarted coordinator finds it."""
    return f"rnnstream-worker-{config.deployment}-{config.pipeline}-{slot}"


class WorkerSlots:
    """Slot number -> worker actor handle, with the operations the coordinator performs on them."""

    def __init__(
        self,
        config: WorkerConfig,
        options: dict[str, Any],
        model_loader: Callable[[str], Any] | None,
        stop_timeout_s: float,
    ) -> None:
        self.config = config
        self.options = options
        self.model_loader = model_loader
        self.stop_timeout_s = stop_timeout_s
        self.actors: dict[int, Any] = {}

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.actors))

    def __len__(self) -> int:
        return len(self.actors)

    def __contains__(self, slot: object) -> bool:
        return slot in self.actors

    def __getitem__(self, slot: int) -> Any:
        return self.actors[slot]

    def items(self) -> list[tuple[int, Any]]:
        return sorted(self.actors.items())

    def start(self, slot: int) -> Any:
        """Start slot ``slot`` (or take the live actor of that name): it owns nothing until assigned."""
        import ray

        actor = (
            ray.remote(ScoringWorkerActor)
            .options(
                name=worker_name(self.config, slot),
                namespace=NAMESPACE,
                lifetime="detached",  # keeps scoring while the coordinator is restarted
                get_if_exists=True,
                max_restarts=-1,
                max_task_retries=0,
                max_concurrency=4,
                **self.options,
            )
            .remote(slot, self.config, self.model_loader)
        )
        self.actors[slot] = actor
        return actor

    def find_running(self) -> list[int]:
        """Take every live worker of this deployment by name (after a coordinator restart); their slots."""
        for slot in range(MAX_SLOTS):
            actor = self._lookup(slot)
            if actor is not None:
                self.actors[slot] = actor
        return sorted(self.actors)

    def retire_leftovers(self) -> None:
        """Stop the workers an earlier run left (detached actors outlive their coordinator), cleanly with
        final checkpoints, so this run starts them with its own configuration."""
        for slot in range(MAX_SLOTS):
            actor = self._lookup(slot)
            if actor is not None:
                log.warning("stopping worker %d left by an earlier run", slot)
                self.actors[slot] = actor
                self.stop(slot)

    def stop(self, slot: int) -> dict[int, int]:
        """Stop a slot cleanly (release with final checkpoints; returns next offsets), then fence its
        transactional id (a stop is no proof of release: a worker that cannot reach Kafka answers it at once,
        see :func:`~rnnstream.workers.control_plan.must_fence_before_handover`). Then remove it for good;
        when it cannot be fenced it is left in place (a later start stops it) and this raises."""
        import ray

        actor = self.actors[slot]
        out: dict[int, int] = {}
        try:
            out = ray.get(actor.stop.remote(), timeout=self.stop_timeout_s)
        except Exception as exc:
            log.warning("worker %d did not stop cleanly: %s", slot, exc)
        if not fence_slot(self.config, slot):
            raise RuntimeError(
                f"worker {slot} could not be fenced; it is left running, its partitions with it"
            )
        self.remove(slot)
        return out

    def remove(self, slot: int) -> None:
        """Kill a slot without restart and wait until its name is free (so a new actor of that name is not
        the old one)."""
        import ray

        ray.kill(self.actors.pop(slot), no_restart=True)
        deadline = time.monotonic() + 30.0
        while self._lookup(slot) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {slot} did not go away in 30 s")
            time.sleep(0.1)

    def restart(self, slot: int) -> None:
        """Kill a slot's process; Ray starts it again, owning nothing (its constructor fences the old
        producer by starting the same transactional id)."""
        import ray

        ray.kill(self.actors[slot], no_restart=False)

    def status(self, slot: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """The slot's status, or None when it does not answer in ``timeout`` seconds."""
        import ray

        try:
            return ray.get(self.actors[slot].status.remote(), timeout=timeout)
        except Exception:
            return None

    def _lookup(self, slot: int) -> Any | None:
        import ray

        try:
            return ray.get_actor(worker_name(self.config, slot), namespace=NAMESPACE)
        except ValueError:
            return None


def report_of(slot: int, status: dict[str, Any] | None, stall_timeout_s: float) -> WorkerReport:
    """A worker's status answer (None: no answer) as the value the health rule decides on."""
    if status is None:
        return WorkerReport(slot=slot, reachable=False)
    return WorkerReport(
        slot=slot,
        reachable=True,
        alive=bool(status.get("alive", True)),
        stalled=status.get("heartbeat_age_s", 0.0) > stall_timeout_s,
        incarnation=status.get("incarnation"),
        partitions=tuple(status.get("partitions", ())),
        challenger_version=status.get("challenger_version"),
        fenced=bool(status.get("fenced", False)),
    )
