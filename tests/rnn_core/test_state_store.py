"""KeyedStateStore: key index, states, growth, forgetting, snapshots, memory accounting."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from rnnstream.rnn_core.state_store import KeyedStateStore

SHAPE = (2, 1, 3)  # LSTM-like: h and c, one layer, hidden 3


def states_for(n: int, offset: float = 0.0) -> torch.Tensor:
    return torch.arange(n * 6, dtype=torch.float32).reshape(n, *SHAPE) + offset


def test_lookup_gives_one_slot_per_distinct_key() -> None:
    store = KeyedStateStore(SHAPE, capacity=4, hash_seed=0)
    slots = store.lookup(["a", "b", "a", "", "ü", "a\x00"])
    assert slots[0] == slots[2]
    assert len(set(slots.tolist())) == 5
    assert store.num_keys == 5 and len(store) == 5
    assert sorted(store.keys()) == sorted(["a", "b", "", "ü", "a\x00"])
    assert store.lookup(["b", "zz"], create=False).tolist() == [slots[1], -1]
    assert "ü" in store and "zz" not in store


def test_keys_in_any_container_find_the_same_slots() -> None:
    store = KeyedStateStore(SHAPE, hash_seed=1)
    keys = ["card-1", "card-22", "host.example.com/" + "x" * 40, "card-1"]
    expected = store.lookup(keys)
    assert store.lookup(np.array(keys, dtype=object)).tolist() == expected.tolist()
    assert store.lookup(pa.array(keys)).tolist() == expected.tolist()
    assert store.lookup(pa.array(keys, type=pa.large_string())).tolist() == expected.tolist()
    assert store.lookup(pa.chunked_array([keys[:2], keys[2:]])).tolist() == expected.tolist()
    assert store.lookup(pa.array(keys).dictionary_encode()).tolist() == expected.tolist()
    sliced = pa.array(["zzz", *keys])[1:]  # a sliced array has a non-zero offset
    assert store.lookup(sliced).tolist() == expected.tolist()
    assert store.num_keys == 3


def test_keys_differing_anywhere_are_different() -> None:
    store = KeyedStateStore(SHAPE, hash_seed=2)
    base = "k" * 37
    keys = [base[:i] for i in range(38)]  # every length 0..37
    keys += [base[:i] + "j" + base[i + 1 :] for i in range(37)]  # one byte changed at every position
    slots = store.lookup(keys)
    assert len(set(slots.tolist())) == len(keys)


def test_bad_keys_are_refused() -> None:
    store = KeyedStateStore(SHAPE)
    with pytest.raises(TypeError, match="strings"):
        store.lookup([1, 2])
    with pytest.raises(ValueError, match="null"):
        store.lookup(["a", None])
    assert store.lookup([]).size == 0


def test_unknown_keys_gather_zeros_and_scatter_round_trips() -> None:
    store = KeyedStateStore(SHAPE, hash_seed=0)
    assert torch.equal(store.gather(["x", "y"]), torch.zeros(2, *SHAPE))
    store.scatter(["x", "y"], states_for(2), np.array([10, 20]))
    assert torch.equal(store.gather(["y", "x"]), states_for(2)[[1, 0]])
    assert store.last_times(["x", "y", "never"]).tolist() == [10, 20, -1]
    with pytest.raises(ValueError, match="twice"):
        store.scatter(["x", "x"], states_for(2), np.array([1, 2]))
    with pytest.raises(ValueError, match="states must be"):
        store.scatter(["x"], torch.zeros(1, 3), np.array([1]))


def test_growth_keeps_every_state() -> None:
    store = KeyedStateStore(SHAPE, capacity=2, hash_seed=3)
    keys = [f"key-{i}" for i in range(5000)]
    for start in range(0, len(keys), 700):
        chunk = keys[start : start + 700]
        store.scatter(chunk, states_for(len(chunk), float(start)), np.full(len(chunk), start))
    assert store.num_keys == 5000
    assert store.capacity >= 5000 and store.capacity & (store.capacity - 1) == 0  # doubled from 2
    got = store.gather(keys[:700])
    assert torch.equal(got, states_for(700, 0.0))
    assert store.last_times(keys[4900:]).tolist() == [4900] * 100


def test_removed_slots_are_zeroed_and_reused() -> None:
    store = KeyedStateStore(SHAPE, capacity=4, hash_seed=0)
    store.scatter(["a", "b", "c"], states_for(3, 1.0), np.array([1, 2, 3]))
    slot_b = store.lookup(["b"], create=False)[0]
    assert store.remove(["b", "not-there"]) == 1
    assert store.num_keys == 2 and "b" not in store
    assert store.lookup(["d"])[0] == slot_b  # freed slot reused ...
    assert torch.equal(store.gather(["d"]), torch.zeros(1, *SHAPE))  # ... and zeroed
    assert torch.equal(store.gather(["b"]), torch.zeros(1, *SHAPE))  # a removed key starts over
    assert store.last_times(["b"]).tolist() == [-1]


def test_evict_idle_uses_event_time() -> None:
    store = KeyedStateStore(SHAPE, hash_seed=0)
    store.scatter(["old", "mid", "new"], states_for(3), np.array([1_000, 5_000, 9_000]))
    assert store.evict_idle(now_ms=10_000, ttl_ms=5_000) == 1  # older than 5_000: only "old"
    assert sorted(store.keys()) == ["mid", "new"]
    assert store.evict_idle(now_ms=10_000, ttl_ms=5_000) == 0
    assert store.evict_idle(now_ms=20_000, ttl_ms=1_000) == 2
    assert store.num_keys == 0


def test_index_matches_a_dict_through_many_inserts_and_removals() -> None:
    """Differential test against a Python dict, through growth, tombstones and table rebuilds."""
    rng = np.random.default_rng(7)
    store = KeyedStateStore((1, 1, 2), capacity=8, hash_seed=5)
    reference: dict[str, float] = {}
    universe = [f"u{i}" for i in range(3000)]
    for step in range(40):
        batch = [universe[i] for i in rng.integers(0, len(universe), 300)]
        distinct = list(dict.fromkeys(batch))
        values = torch.full((len(distinct), 1, 1, 2), float(step))
        store.scatter(distinct, values, np.full(len(distinct), step))
        reference.update({k: float(step) for k in distinct})
        gone = [universe[i] for i in rng.integers(0, len(universe), 200)]
        assert store.remove(gone) == len(set(gone) & reference.keys())
        for k in gone:
            reference.pop(k, None)
        assert store.num_keys == len(reference)
    assert sorted(store.keys()) == sorted(reference)
    slots = store.lookup(universe, create=False)
    present = np.array([k in reference for k in universe])
    assert (slots[~present] == -1).all()
    assert len(set(slots[present].tolist())) == int(present.sum())
    got = store.gather([k for k in universe if k in reference])[:, 0, 0, 0].numpy()
    assert got.tolist() == [reference[k] for k in universe if k in reference]


def test_same_seed_same_slots() -> None:
    keys = [f"k{i}" for i in range(100)]
    a = KeyedStateStore(SHAPE, hash_seed=11).lookup(keys)
    b = KeyedStateStore(SHAPE, hash_seed=11).lookup(keys)
    assert a.tolist() == b.tolist()


def test_snapshot_restores_into_a_store_holding_other_keys(tmp_path) -> None:
    src = KeyedStateStore(SHAPE, hash_seed=0)
    src.scatter(["a", "b", "c"], states_for(3, 1.0), np.array([10, 20, 30]))
    path = str(tmp_path / "part-0" / "state.arrow")
    written = src.snapshot(["a", "c", "unknown"], path, metadata={"offset": "42", "model": "v3"})
    assert written == 2
    assert os.listdir(tmp_path / "part-0") == ["state.arrow"]  # no temporary file left behind

    dst = KeyedStateStore(SHAPE, hash_seed=9)  # other seed, other slots
    dst.scatter(["c", "z"], states_for(2, 100.0), np.array([1, 2]))
    meta = dst.restore(path)
    assert meta == {"offset": "42", "model": "v3"}
    assert sorted(dst.keys()) == ["a", "c", "z"]
    assert torch.equal(dst.gather(["a", "c"]), src.gather(["a", "c"]))  # "c" overwritten by the snapshot
    assert torch.equal(dst.gather(["z"]), states_for(2, 100.0)[1:])  # "z" untouched
    assert dst.last_times(["a", "c", "z"]).tolist() == [10, 30, 2]


def test_snapshot_of_no_keys_restores(tmp_path) -> None:
    """A partition that has seen no key yet still checkpoints, and that checkpoint restores."""
    path = str(tmp_path / "empty.arrow")
    assert KeyedStateStore(SHAPE).snapshot(None, path, metadata={"offset": "0"}) == 0
    dst = KeyedStateStore(SHAPE)
    dst.scatter(["kept"], states_for(1), np.array([5]))
    assert dst.restore(path) == {"offset": "0"}
    assert dst.keys() == ["kept"]


def test_snapshot_file_layout(tmp_path) -> None:
    store = KeyedStateStore(SHAPE, hash_seed=0)
    store.scatter(["a"], states_for(1), np.array([5]))
    path = str(tmp_path / "s.arrow")
    store.snapshot(None, path)
    with pa.memory_map(path) as f:
        table = pa.ipc.open_file(f).read_all()
    assert table.schema.field("key").type == pa.string()
    assert table.schema.field("state").type == pa.list_(pa.float32(), 6)
    assert table.schema.field("last_time").type == pa.int64()
    assert table.column("state").to_pylist()[0] == states_for(1).reshape(-1).tolist()


def test_snapshot_through_other_filesystems(tmp_path) -> None:
    store = KeyedStateStore(SHAPE, hash_seed=0)
    store.scatter(["a", "b"], states_for(2), np.array([1, 2]))
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    store.snapshot(None, "nested/dir/s.arrow", filesystem=subtree, metadata={"k": "v"})
    assert (tmp_path / "nested" / "dir" / "s.arrow").exists()
    fresh = KeyedStateStore(SHAPE)
    assert fresh.restore("nested/dir/s.arrow", filesystem=subtree) == {"k": "v"}
    assert torch.equal(fresh.gather(["a", "b"]), states_for(2))

    import fsspec

    memory = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))  # an object-store stand-in
    store.snapshot(["b"], "bucket/p1/s.arrow", filesystem=memory)
    other = KeyedStateStore(SHAPE)
    other.restore("bucket/p1/s.arrow", filesystem=memory)
    assert other.keys() == ["b"]
    assert torch.equal(other.gather(["b"]), states_for(2)[1:])


def test_restore_refuses_another_state_shape(tmp_path) -> None:
    store = KeyedStateStore(SHAPE)
    store.scatter(["a"], states_for(1), np.array([1]))
    path = str(tmp_path / "s.arrow")
    store.snapshot(None, path)
    with pytest.raises(ValueError, match="state shape"):
        KeyedStateStore((1, 1, 6)).restore(path)


def test_nbytes_counts_slab_index_and_keys() -> None:
    store = KeyedStateStore((1, 1, 64), hash_seed=0)
    empty = store.nbytes
    keys = [f"key-{i:06d}" for i in range(2**14)]
    store.reserve(len(keys))
    store.lookup(keys)
    slab = store.capacity * store.raw_bytes_per_key
    assert store.nbytes > slab + empty
    overhead_per_key = (store.nbytes - slab) / store.num_keys
    assert 60 < overhead_per_key < 250  # key string + pointers + times + fingerprints + table share
    assert store.nbytes / store.num_keys <= 2 * store.raw_bytes_per_key + 100


def test_gather_slots_into_a_reused_buffer_and_huge_page_backed_growth() -> None:
    """``gather_slots(out=...)`` writes the states into the buffer it returns as a tensor; a store big
    enough for huge-page backed arrays (>= 4 MiB) grows and looks up like a small one."""
    store = KeyedStateStore(SHAPE, capacity=4, hash_seed=1)
    keys = [f"key-{i}" for i in range(300_000)]  # slab 300k * 24 B and the table pass 4 MiB
    store.scatter(keys, states_for(len(keys)), np.arange(len(keys)))
    slots = store.lookup(keys[::1000], create=False)
    buf = np.full((slots.size, *SHAPE), np.nan, np.float32)
    got = store.gather_slots(slots, out=buf)
    assert np.shares_memory(got.numpy(), buf)
    torch.testing.assert_close(got, states_for(len(keys))[::1000])
    torch.testing.assert_close(store.gather_slots(slots), got)
    assert store.last_times(keys[-3:]).tolist() == [299_997, 299_998, 299_999]


def test_forgotten_key_bytes_are_compacted_away() -> None:
    """Keys are kept as bytes; once forgotten keys' bytes outweigh the live ones, the buffer is compacted and
    every remaining key still reads back and finds its slot and state."""
    store = KeyedStateStore((1, 1, 2), hash_seed=4)
    keys = [f"{i:08d}-" + "x" * 90 for i in range(30_000)]  # ~3 MB of key bytes
    store.scatter(keys, torch.arange(60_000, dtype=torch.float32).reshape(-1, 1, 1, 2), np.arange(30_000))
    before = store._keys.used
    assert store.remove(keys[:20_000]) == 20_000
    assert store._keys.used < before / 2 and store._keys.garbage == 0  # compacted
    assert sorted(store.keys()) == keys[20_000:]
    got = store.gather(keys[20_000:])[:, 0, 0, 0]
    assert got.tolist() == [float(2 * i) for i in range(20_000, 30_000)]
    assert store.last_times(keys[29_998:]).tolist() == [29_998, 29_999]
    fresh = store.lookup(["new-key"])
    assert store.slot_keys(fresh).tolist() == ["new-key"]


def test_lookup_links_each_event_to_its_keys_previous_one() -> None:
    """lookup_linked: the batch's previous event of the same key, for known and new keys, and none from an
    earlier batch (nor from a key removed and added again)."""
    store = KeyedStateStore((1, 1, 2), capacity=4, hash_seed=3)
    store.lookup(["a", "b"])
    slots, prev = store.lookup_linked(["a", "x", "a", "b", "x", "x", "c", "a"])
    np.testing.assert_array_equal(prev, [-1, -1, 0, -1, 1, 4, -1, 2])
    assert slots[0] == slots[2] == slots[7] and slots[1] == slots[4] == slots[5]
    slots2, prev2 = store.lookup_linked(["x", "c", "c", "zz"])
    np.testing.assert_array_equal(prev2, [-1, -1, 1, -1])
    assert slots2[0] == slots[1]
    store.remove(["c"])
    unknown = store.lookup_linked(["c", "q", "c"], create=False)
    np.testing.assert_array_equal(unknown[0], [-1, -1, -1])
    np.testing.assert_array_equal(unknown[1], [-1, -1, -1])
    _, prev3 = store.lookup_linked(["c", "q", "c", "q"])
    np.testing.assert_array_equal(prev3, [-1, -1, 0, 1])
