"""The control side of a scoring worker: the calls other threads make (assign, release, swap, stop, status)
and the commands they run on the loop thread between cycles.

:class:`WorkerCommands` is a base of :class:`rnnstream.workers.scoring_worker.ScoringWorker`, which owns the
loop, the clients and the partitions; every public method here queues its command on the loop thread
(:class:`LoopCalls`) and waits for the result, so Kafka is only ever touched by that one thread. A command
first brings the worker to a commit boundary (:meth:`WorkerCommands._quiesce`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rnnstream.workers.gc_pauses import freeze_long_lived
from rnnstream.workers.worker_config import ModelHandle

if TYPE_CHECKING:
    import threading

    from rnnstream.workers.commit_in_flight import CommitInFlight
    from rnnstream.workers.failure_record import FailureRecord
    from rnnstream.workers.loop_calls import LoopCalls
    from rnnstream.workers.owned_partitions import OwnedPartitions
    from rnnstream.workers.served_models import ServedModels
    from rnnstream.workers.worker_clients import WorkerClients
    from rnnstream.workers.worker_report import WorkerReport


class WorkerCommands:
    """Control calls of a scoring worker; the loop side (``_commit``, ``_resume``, ``_close_clients``) and
    the attributes below are :class:`ScoringWorker`'s."""

    name: str
    parts: OwnedPartitions
    models: ServedModels
    health: FailureRecord
    report: WorkerReport
    _calls: LoopCalls
    _stop: threading.Event
    _thread: threading.Thread
    _clients: WorkerClients | None
    _committing: CommitInFlight

    # ---------------------------------------------------------------------------------------- control API

    def assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        """Take ``partitions`` (restored from their checkpoints); returns all owned partitions."""
        return self._on_loop(self._assign, list(partitions), handle)

    def set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        """Own exactly ``partitions``: release the others (final checkpoints), open the new ones."""
        return self._on_loop(self._set_partitions, list(partitions), handle)

    def release(self, partitions: list[int]) -> dict[int, int]:
        """Commit, write a final checkpoint of each partition, give them up; returns their next offsets."""
        return self._on_loop(self._release, list(partitions))

    def final_checkpoint(self) -> dict[int, int]:
        """Commit and checkpoint every owned partition now; returns their next offsets."""
        return self._on_loop(self._final_checkpoint)

    def prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        """Load ``handle`` as a challenger scoring the same events with fresh states from here on (into the
        shadow topic too when ``shadow``). Returns each partition's warm-up start offset."""
        return self._on_loop(self._prepare_model, handle, bool(shadow))

    def switch_model(self) -> dict[str, Any]:
        """Make the warmed challenger champion at this commit boundary. Returns the switch offsets and how
        many of the champion's keys the challenger had states of (``keys_warmed``) or not (``keys_cold``:
        they start from an empty state under the new model)."""
        return self._on_loop(self._switch_model)

    def drop_challenger(self) -> None:
        self._on_loop(self._drop_challenger)

    def stop(self, timeout: float = 120.0) -> dict[int, int]:
        """Release every partition (final checkpoints), close the clients and end the loop."""
        if not self._thread.is_alive():
            return {}
        return self._on_loop(self._stop_loop, timeout=timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        """:meth:`stop`, then wait for the loop thread; the lag watcher and the endpoint end too."""
        try:
            if self._thread.is_alive():
                try:
                    self.stop(timeout=timeout)
                finally:
                    self._thread.join(timeout=timeout)
        finally:
            self.report.close()

    def status(self) -> dict[str, Any]:
        """Cheap, lock-free status (answered from the caller's thread, see :class:`WorkerReport`)."""
        return self.report.status()

    def metrics_snapshot(self) -> dict[str, Any]:
        return self.report.metrics_snapshot()

    def _on_loop(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 120.0) -> Any:
        """Run ``fn(*args)`` on the loop thread between cycles and return its result."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.name} loop is not running ({self.health.last_error})")
        return self._calls.call(fn, *args, timeout=timeout)

    # ------------------------------------------------------------------------------------------- commands

    def _quiesce(self) -> None:
        if self._committing.pending or self._clients.tx.open or bool(self.parts.uncommitted_offsets()):
            self._commit()
        self._resume()

    def _assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        self._quiesce()
        self.models.ensure_champion(handle, self.parts)
        for p in sorted(set(partitions) - set(self.parts)):
            self.parts.open(p, self.models.champion, self.models.challenger, self._clients)
        self.parts.apply(self._clients)
        self.report.publish(self.parts)
        freeze_long_lived()  # full GC passes would walk the model and clients each time (gc_pauses)
        return sorted(self.parts)

    def _set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        drop = sorted(set(self.parts) - set(partitions))
        if drop:
            self._release(drop)
        return self._assign(partitions, handle)

    def _release(self, partitions: list[int]) -> dict[int, int]:
        self._quiesce()
        out = self.parts.release(partitions)
        self.parts.apply(self._clients)
        self.report.publish(self.parts)
        return out

    def _final_checkpoint(self) -> dict[int, int]:
        self._quiesce()
        return self.parts.checkpoint_all()

    def _stop_now(self) -> dict[int, int]:
        """Stop without Kafka (it is unreachable): end the loop; partitions restart from checkpoints."""
        self._stop.set()
        self._close_clients()
        return {}

    def _stop_loop(self) -> dict[int, int]:
        out = self._release(sorted(self.parts)) if self.parts else {}
        self._close_clients()
        self._stop.set()
        return out

    def _prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        challenger = self.models.load(handle)
        self._quiesce()
        return self.models.prepare(challenger, shadow, self.parts)

    def _switch_model(self) -> dict[str, Any]:
        if self.models.challenger is None:
            raise RuntimeError("no challenger prepared")
        self._quiesce()
        return self.models.switch(self.parts)

    def _drop_challenger(self) -> None:
        self.models.drop(self.parts)
