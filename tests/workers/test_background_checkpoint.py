"""Checkpoints are written off the loop thread (checkpoint_writer): the worker keeps fetching and scoring
while a (deliberately held) write is in flight, a due checkpoint of a partition still being written is
skipped, a stop waits for the write in flight before it releases the partitions, and a failed write
reaches the worker's status as a synchronous one did."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.workers.checkpoint_writer import CheckpointWriteFailed, CheckpointWriter
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.partition_checkpoint import CheckpointInfo, PartitionCheckpoints, PreparedCheckpoint
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import make_events, wait_for, worker_config

GATE_LIMIT_S = 120.0


class HeldCheckpoints(PartitionCheckpoints):
    """Checkpoint storage whose first write waits until the test opens the gate (or fails, when told to)."""

    def __init__(self, *args, fail: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.fail = fail
        self.started = threading.Event()
        self.gate = threading.Event()
        self.held: CheckpointInfo | None = None
        self.order: list[str] = []

    def write_prepared(self, prepared: PreparedCheckpoint) -> CheckpointInfo:
        if self.held is None:
            self.held = prepared.info
            self.started.set()
            if not self.gate.wait(GATE_LIMIT_S):
                raise AssertionError("the test never opened the gate")
            if self.fail:
                raise OSError("storage refused the checkpoint")
            info = super().write_prepared(prepared)
            self.order.append("held write complete")
            return info
        return super().write_prepared(prepared)


def _install(worker: ScoringWorker, ckpts: PartitionCheckpoints) -> None:
    worker.checkpoints = ckpts
    worker.parts.checkpoints = ckpts
    worker.parts.writer.checkpoints = ckpts


def _produce(settings, schema, n: int, seed: int) -> None:
    with EventProducer(settings, schema) as producer:
        producer.send_arrow(make_events(schema, n, 20, seed=seed), events_per_message=50)
        producer.flush()


def test_loop_scores_while_a_checkpoint_is_written_and_stop_waits_for_it(new_stream, tmp_path) -> None:
    settings, _, schema, _, handle = new_stream("bg-ckpt", 2)
    config = worker_config(
        settings, schema, tmp_path / "ckpt", checkpoint_interval_events=50, checkpoint_interval_seconds=3600
    )
    ckpts = HeldCheckpoints(config.checkpoint_uri, config.pipeline, deployment=config.deployment)
    worker = ScoringWorker(0, config, export_metrics=False)
    _install(worker, ckpts)
    stopper = None
    try:
        _produce(settings, schema, 400, seed=1)
        worker.assign([0, 1], handle)
        wait_for(ckpts.started.is_set, 60, "a checkpoint write to begin")
        held = ckpts.held
        assert held is not None
        # while it is held, the loop goes on: more events are fetched, scored and committed
        _produce(settings, schema, 400, seed=2)
        wait_for(lambda: committed_all(settings, config), 60, "every event committed while a write is held")
        assert worker.metrics_snapshot()["scored"] == 800
        assert worker.parts.writer.writing(held.partition)  # still in flight: one write, not a second one
        assert not ckpts.filesystem.get_file_info(held.path).is_file  # not visible before it is whole
        assert ckpts.latest(held.partition) is None

        # stop: the loop waits for the held write before it releases the partitions
        waiting = threading.Event()
        real_wait = worker.parts.writer.wait

        def wait_noted(partitions=None):
            if partitions is None or held.partition in list(partitions):
                waiting.set()
            return real_wait(partitions)

        worker.parts.writer.wait = wait_noted
        result: dict = {}

        def stop() -> None:
            result["offsets"] = worker.stop()
            ckpts.order.append("stopped")

        stopper = threading.Thread(target=stop)
        stopper.start()
        wait_for(waiting.is_set, 60, "the stop to wait for the write in flight")
        assert stopper.is_alive() and "stopped" not in ckpts.order
        ckpts.gate.set()
        stopper.join(GATE_LIMIT_S)
        assert not stopper.is_alive()
        assert ckpts.order == ["held write complete", "stopped"]
        assert ckpts.filesystem.get_file_info(held.path).is_file  # the held one completed, then the finals
        for p, offset in result["offsets"].items():
            assert ckpts.latest(p, handle.version).next_offset == offset
    finally:
        ckpts.gate.set()
        if stopper is not None:
            stopper.join(GATE_LIMIT_S)
        worker.shutdown()


def test_failed_background_write_reaches_status_and_recovers(new_stream, tmp_path) -> None:
    settings, _, schema, _, handle = new_stream("bg-ckpt-fail", 1)
    config = worker_config(
        settings, schema, tmp_path / "ckpt", checkpoint_interval_events=50, checkpoint_interval_seconds=3600
    )
    ckpts = HeldCheckpoints(config.checkpoint_uri, config.pipeline, deployment=config.deployment, fail=True)
    worker = ScoringWorker(0, config, export_metrics=False)
    _install(worker, ckpts)
    try:
        _produce(settings, schema, 300, seed=3)
        worker.assign([0], handle)
        wait_for(ckpts.started.is_set, 60, "a checkpoint write to begin")
        ckpts.gate.set()
        wait_for(lambda: worker.status()["resets"] >= 1, 60, "the failed write to reset the worker")
        assert "storage refused the checkpoint" in (worker.status()["last_error"] or "")
        wait_for(lambda: committed_all(settings, config), 60, "every event committed after the reset")
        offsets = worker.stop()
    finally:
        ckpts.gate.set()
        worker.shutdown()
    assert ckpts.latest(0, handle.version).next_offset == offsets[0] > 0


def _prepared(ckpts: PartitionCheckpoints, partition: int, offset: int) -> PreparedCheckpoint:
    store = KeyedStateStore((1, 1, 4))
    store.scatter(["a", "b"], torch.full((2, 1, 1, 4), float(offset)), np.arange(2))
    return ckpts.prepare(partition, store, offset, "v1")


def test_writer_holds_one_write_per_partition_and_raises_a_failure(tmp_path) -> None:
    ckpts = HeldCheckpoints(str(tmp_path / "ckpt"), "unit")
    writer = CheckpointWriter(ckpts)
    try:
        writer.submit(_prepared(ckpts, 0, 10))
        wait_for(ckpts.started.is_set, 30, "the write to begin")
        with pytest.raises(RuntimeError, match="already being written"):
            writer.submit(_prepared(ckpts, 0, 20))
        assert writer.writing(0) and writer.finished() == []
        ckpts.gate.set()
        (done,) = writer.wait([0])
        assert done.info.next_offset == 10 and ckpts.latest(0).next_offset == 10
        assert not writer.writing(0)
        ckpts.fail, ckpts.held = True, None
        ckpts.gate.set()
        writer.submit(_prepared(ckpts, 0, 20))
        with pytest.raises(CheckpointWriteFailed, match="partition 0 at offset 20: OSError: storage refused"):
            writer.wait()
        assert not writer.writing(0) and ckpts.latest(0).next_offset == 10
    finally:
        ckpts.gate.set()
        writer.close()
