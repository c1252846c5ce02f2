"""Background checkpoint writes collected together where one failed (a real fault: a plain file where a
partition's checkpoint folder goes): every write that completed is still returned and recorded as the
partition's checkpoint offset, every failure is reported with its partition and reason, the failed partition
keeps its older checkpoint (a checkpoint lags, never leads, the committed offset) and is written again once
the fault is gone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.workers.checkpoint_writer import CheckpointWriteFailed, CheckpointWriter
from rnnstream.workers.owned_partitions import OwnedPartitions
from rnnstream.workers.partition_checkpoint import PartitionCheckpoints
from rnnstream.workers.scoring_partition import LoadedModel
from rnnstream.workers.worker_clients import WorkerClients
from rnnstream.workers.worker_metrics import WorkerMetrics
from tests.workers.worker_harness import worker_config

BLOCKED = 1  # the partition whose checkpoint folder is a plain file: its writes fail in create_dir


def _block(ckpts: PartitionCheckpoints, partition: int) -> None:
    ckpts.filesystem.create_dir(ckpts.root, recursive=True)
    with ckpts.filesystem.open_output_stream(ckpts.partition_dir(partition)) as out:
        out.write(b"not a folder")


def _unblock(ckpts: PartitionCheckpoints, partition: int) -> None:
    ckpts.filesystem.delete_file(ckpts.partition_dir(partition))


def _store(offset: int) -> KeyedStateStore:
    store = KeyedStateStore((1, 1, 4))
    store.scatter(["a", "b"], torch.full((2, 1, 1, 4), float(offset)), np.arange(2))
    return store


def test_collected_writes_keep_the_successes_and_name_every_failure(tmp_path) -> None:
    ckpts = PartitionCheckpoints(str(tmp_path / "ckpt"), "unit")
    _block(ckpts, BLOCKED)
    writer = CheckpointWriter(ckpts)
    offsets = {0: 10, BLOCKED: 20, 2: 30}
    try:
        for p, offset in offsets.items():
            writer.submit(ckpts.prepare(p, _store(offset), offset, "v1"))
        with pytest.raises(CheckpointWriteFailed) as raised:
            writer.wait()
        failed = raised.value
        assert {w.info.partition: w.info.next_offset for w in failed.written} == {0: 10, 2: 30}
        assert sorted(failed.failures) == [BLOCKED]
        info, cause = failed.failures[BLOCKED]
        assert info.next_offset == 20 and isinstance(cause, OSError)
        assert f"partition {BLOCKED} at offset 20: {type(cause).__name__}" in str(failed)
        assert failed.__cause__ is cause
        assert not any(writer.writing(p) for p in offsets)
        assert ckpts.latest(0).next_offset == 10 and ckpts.latest(2).next_offset == 30

        _unblock(ckpts, BLOCKED)  # nothing of the failed write is there; its next write goes through
        assert ckpts.latest(BLOCKED) is None
        writer.submit(ckpts.prepare(BLOCKED, _store(25), 25, "v1"))
        (done,) = writer.wait([BLOCKED])
        assert done.info.next_offset == 25 == ckpts.latest(BLOCKED).next_offset
    finally:
        writer.close()


def test_owner_records_the_completed_writes_when_another_failed(new_stream, tmp_path) -> None:
    settings, _, schema, model, handle = new_stream("ckpt-partial", 3)
    config = worker_config(settings, schema, tmp_path / "ckpt")
    ckpts = PartitionCheckpoints(config.checkpoint_uri, config.pipeline, deployment=config.deployment)
    owned = OwnedPartitions(ckpts, WorkerMetrics(config.pipeline, "w0", export=False), None)
    clients = WorkerClients(config, 0)
    try:
        for p in range(3):
            owned.open(p, LoadedModel.of(handle, model), None, clients)
            owned[p].offsets.applied(last_offset=9, events=10)  # ten events scored and committed
            owned[p].offsets.mark_committed()
        _block(ckpts, BLOCKED)
        owned.checkpoint_due(every_events=10, every_seconds=3600)  # three copies handed to the writer
        assert all(owned.writer.writing(p) for p in range(3))

        with pytest.raises(CheckpointWriteFailed, match=f"partition {BLOCKED} at offset 10"):
            owned.release([0, 1, 2])  # waits for the writes first; one of them failed
        assert {p: owned[p].offsets.checkpoint_offset for p in range(3)} == {0: 10, BLOCKED: 0, 2: 10}
        assert owned.metrics.counts["checkpoints"] == 2
        for p in range(3):
            assert owned[p].offsets.checkpoint_offset <= owned[p].offsets.committed
        assert not owned.writer.writing(BLOCKED)

        _unblock(ckpts, BLOCKED)  # the handover again: only the failed partition needs a final checkpoint
        assert ckpts.latest(BLOCKED) is None
        assert owned.release([0, 1, 2]) == {0: 10, 1: 10, 2: 10}
        assert owned.metrics.counts["checkpoints"] == 3
        assert {p: ckpts.latest(p, handle.version).next_offset for p in range(3)} == {0: 10, 1: 10, 2: 10}
    finally:
        owned.close()
        clients.close()
