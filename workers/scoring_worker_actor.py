"""The Ray face of a scoring worker: :class:`ScoringWorkerActor` (one per worker slot) and fencing a slot.

The coordinator makes each slot with ``ray.remote(ScoringWorkerActor).options(max_restarts=-1)``; every
method is an explicit call on the worker (no command strings), run on its loop thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from rnnstream.workers.kernel_warmup import start_kernel_warmup
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig, transactional_id

log = logging.getLogger(__name__)


class ScoringWorkerActor:
    """The Ray actor around a :class:`ScoringWorker` (made with ``ray.remote(max_restarts=-1)`` by the
    coordinator). A restart re-runs this constructor: the new process fences the old transactional producer
    and owns nothing until the coordinator assigns its partitions again (from their checkpoints)."""

    def __init__(
        self, slot: int, config: WorkerConfig, model_loader: Callable[[str], Any] | None = None
    ) -> None:
        start_kernel_warmup()  # compiled kernels loaded while Kafka connects and the partitions are due
        self.worker = ScoringWorker(slot, config, model_loader=model_loader)

    def status(self) -> dict[str, Any]:
        return self.worker.status()

    def metrics(self) -> dict[str, Any]:
        return self.worker.metrics_snapshot()

    def assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        return self.worker.assign(partitions, handle)

    def set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        return self.worker.set_partitions(partitions, handle)

    def release(self, partitions: list[int]) -> dict[int, int]:
        return self.worker.release(partitions)

    def final_checkpoint(self) -> dict[int, int]:
        return self.worker.final_checkpoint()

    def prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        return self.worker.prepare_model(handle, shadow)

    def challenger_events(self) -> int:
        return self.worker.models.challenger_events

    def switch_model(self) -> dict[str, Any]:
        return self.worker.switch_model()

    def drop_challenger(self) -> None:
        self.worker.drop_challenger()

    def stop(self) -> dict[int, int]:
        return self.worker.stop()

    def pid(self) -> int:
        return os.getpid()


def fence_slot(config: WorkerConfig, slot: int) -> bool:
    """Fence a worker slot that did not stop cleanly, by starting its transactional id once: the broker
    aborts what it left open and refuses every later commit of the old producer (a zombie that wakes up
    fails with ``ProducerFenced`` and stops). Returns False when the broker could not be reached (then
    nothing of the slot may be handed over yet).
    """
    if not config.transactions:
        return True
    from kafka import KafkaProducer

    try:
        producer = KafkaProducer(
            **config.kafka.client_kwargs(), transactional_id=transactional_id(config, slot)
        )
        producer.init_transactions()
        producer.close(timeout=5)
        return True
    except Exception as exc:
        log.warning("could not fence worker slot %d: %s", slot, exc)
        return False
