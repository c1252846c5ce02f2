"""An unreadable newest checkpoint (a truncated upload, another file format) falls back to the one before it,
on a real S3-protocol server, and says so; no readable checkpoint and a log that no longer starts at 0 is an
error, never a silent start from empty states."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
import torch

from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.workers.partition_checkpoint import CheckpointsUnreadable, PartitionCheckpoints
from rnnstream.workers.scoring_partition import LoadedModel, ScoringPartition
from tests.deploy.stand_ins import ObjectStores
from tests.workers.worker_harness import make_model, make_schema

URI = "s3://ckpt-fallback/run"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStores]:
    stores = ObjectStores(tmp_path_factory.mktemp("object-stores")).start()
    try:
        stores.create_buckets({URI})
        with pytest.MonkeyPatch.context() as mp:
            for k, v in stores.env.items():
                mp.setenv(k, v)
            yield stores
    finally:
        stores.stop()


@pytest.fixture
def champion(tmp_path: Path) -> LoadedModel:
    model, handle = make_model(make_schema("fallback"), tmp_path / "model", seed=3, hidden=8)
    return LoadedModel.of(handle, model)


def _store_at(champion: LoadedModel, value: float, keys: list[str]) -> KeyedStateStore:
    store = KeyedStateStore(tuple(champion.model.state_shape))
    shape = (len(keys), *champion.model.state_shape)
    store.scatter(keys, torch.full(shape, value), np.arange(len(keys)))
    return store


def _overwrite(ckpts: PartitionCheckpoints, path: str, data: bytes) -> None:
    with ckpts.filesystem.open_output_stream(path) as out:
        out.write(data)


@pytest.mark.parametrize("damage", ["truncated", "other_format"])
def test_unreadable_newest_checkpoint_falls_back_to_the_one_before(s3, champion, damage, tmp_path) -> None:
    ckpts = PartitionCheckpoints(URI, f"fallback-{damage}", keep=2)
    keys = ["a", "b", "c"]
    ckpts.write(0, _store_at(champion, 1.0, keys), 100, champion.version)
    newest = ckpts.write(0, _store_at(champion, 2.0, keys), 200, champion.version)
    with ckpts.filesystem.open_input_stream(newest.path) as src:
        whole = src.read()
    if damage == "truncated":
        _overwrite(ckpts, newest.path, whole[: len(whole) // 2])
    else:
        feather.write_feather(pa.table({"key": ["a"], "other": [1]}), str(tmp_path / "x.arrow"))
        _overwrite(ckpts, newest.path, (tmp_path / "x.arrow").read_bytes())

    part, restored = ScoringPartition.open(0, champion, None, ckpts, log_start=50, group_committed=200)
    assert restored.info is not None and restored.info.next_offset == 100
    assert [c.path for c, _ in restored.skipped] == [newest.path]
    assert restored.skipped[0][1]  # the reason, for the log line
    assert part.offsets.next_offset == 100 and part.offsets.emit_from == 200  # replayed, not re-emitted
    assert torch.equal(part.store.gather(keys), torch.full((3, *champion.model.state_shape), 1.0))


def test_no_readable_checkpoint_is_an_error_unless_the_log_holds_everything(s3, champion) -> None:
    ckpts = PartitionCheckpoints(URI, "fallback-none", keep=2)
    only = ckpts.write(0, _store_at(champion, 1.0, ["a"]), 100, champion.version)
    _overwrite(ckpts, only.path, b"not arrow")
    with pytest.raises(CheckpointsUnreadable, match=r"partition 0: no checkpoint of .* is readable"):
        ScoringPartition.open(0, champion, None, ckpts, log_start=40, group_committed=100)
    part, restored = ScoringPartition.open(0, champion, None, ckpts, log_start=0, group_committed=100)
    assert restored.info is None and len(restored.skipped) == 1
    assert part.offsets.next_offset == 0 and len(part.store) == 0  # the whole log replays into fresh states


def test_two_deployments_with_one_checkpoint_root_keep_their_own_states(s3, champion) -> None:
    """Two releases given the same checkpoint URI (the chart's default) never read or prune each other's."""
    blue = PartitionCheckpoints(URI, "shared", keep=1, deployment="blue")
    green = PartitionCheckpoints(URI, "shared", keep=1, deployment="green")
    blue.write(0, _store_at(champion, 1.0, ["a"]), 10, champion.version)
    green.write(0, _store_at(champion, 2.0, ["a"]), 20, champion.version)
    blue.write(0, _store_at(champion, 3.0, ["a"]), 30, champion.version)  # prunes blue's older one only
    assert [c.next_offset for c in blue.list(0)] == [30]
    assert [c.next_offset for c in green.list(0)] == [20]
    _, restored = ScoringPartition.open(0, champion, None, green, log_start=0, group_committed=None)
    assert restored.info is not None and restored.info.next_offset == 20
