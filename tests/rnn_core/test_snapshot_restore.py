"""Restoring a snapshot into a fresh store: the path a restarted worker takes, bit-equal in every form the
file can come in (memory-mapped local file, a file replaced or deleted after it was read, a table of several
chunks)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.state_snapshot import read_snapshot
from rnnstream.rnn_core.state_store import KeyedStateStore

SHAPE = (1, 1, 8)


def filled_store(n: int, seed: int) -> KeyedStateStore:
    rng = np.random.default_rng(seed)
    store = KeyedStateStore(SHAPE, capacity=16, hash_seed=seed)
    slots = store.lookup([f"k{seed}-{i}" for i in range(n)])
    rows = rng.standard_normal((n, *SHAPE), dtype=np.float32)
    rows[0] = np.float32(-0.0)  # signed zeros and odd values come back bit for bit
    rows[1, 0, 0, 0] = np.float32(np.finfo(np.float32).tiny / 2)  # a subnormal
    store.scatter_slots(slots, torch.from_numpy(rows), rng.integers(0, 2**40, n))
    store.watermark_ms = 77
    return store


def same_states(a: KeyedStateStore, b: KeyedStateStore) -> bool:
    ta, tb = a.snapshot_table(None).sort_by("key"), b.snapshot_table(None).sort_by("key")
    bits = [t.column("state").combine_chunks().flatten().to_numpy().view(np.uint32) for t in (ta, tb)]
    return (
        ta.column("key").equals(tb.column("key"))
        and np.array_equal(*bits)
        and ta.column("last_time").equals(tb.column("last_time"))
    )


def test_restore_into_a_fresh_store_is_bit_equal_and_sized_once(tmp_path) -> None:
    src = filled_store(5000, seed=1)
    path = str(tmp_path / "s.arrow")
    src.snapshot(None, path, metadata={"offset": "9"})
    dst = KeyedStateStore(SHAPE, capacity=4)
    grown: list[int] = []
    grow = dst._grow_slots
    dst._grow_slots = lambda cap: (grown.append(cap), grow(cap))[1]
    assert dst.restore(path) == {"offset": "9"}
    assert grown == [8192]  # the size doubling from 4 reaches, allocated once (not 8, 16, ... 8192)
    assert dst.watermark_ms == 77
    assert same_states(src, dst)
    new = dst.lookup(["a new key"])  # the store goes on growing past the reserve
    assert dst.gather_slots(new).abs().sum().item() == 0.0 and dst.num_keys == 5001


def test_states_stay_after_the_mapped_file_is_replaced_or_deleted(tmp_path) -> None:
    """A checkpoint is read memory-mapped; the next checkpoint renamed over it, or a prune, must not change
    what was read (files are only ever replaced by a rename, never rewritten in place)."""
    src = filled_store(300, seed=2)
    path = str(tmp_path / "s.arrow")
    src.snapshot(None, path)
    table = read_snapshot(path)
    filled_store(300, seed=3).snapshot(None, path)  # another file renamed over the name
    dst = KeyedStateStore(SHAPE)
    dst.restore_table(table)
    os.remove(path)
    assert same_states(src, dst)


def test_restore_of_a_table_in_several_chunks(tmp_path) -> None:
    src = filled_store(1000, seed=4)
    whole = src.snapshot_table(None)
    chunked = pa.Table.from_batches(whole.to_batches(max_chunksize=300), whole.schema)
    assert chunked.column("state").num_chunks > 1
    into_empty = KeyedStateStore(SHAPE)
    into_empty.restore_table(chunked)
    assert same_states(src, into_empty)
    holding = filled_store(50, seed=5)  # slots of the snapshot's keys come after the ones already held
    holding.restore_table(chunked)
    assert holding.num_keys == 1050
    assert np.array_equal(holding.last_times(whole.column("key")), whole.column("last_time").to_numpy())
