"""The state store's parts alone: fingerprints, the probe table, and the snapshot format."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from rnnstream.rnn_core.key_hashing import as_string_array, fingerprints
from rnnstream.rnn_core.key_kernels import FREE, release_slots
from rnnstream.rnn_core.key_table import KeyTable
from rnnstream.rnn_core.state_snapshot import read_snapshot_table, snapshot_table

SEEDS = np.array([[12345], [67890]], np.uint64)


def test_fingerprints_are_per_key_and_seeded() -> None:
    keys = as_string_array([f"key-{i}" for i in range(2000)] + ["", "a" * 100, "key-7"])
    h1, h2 = fingerprints(keys, SEEDS)
    pairs = set(zip(h1.tolist(), h2.tolist(), strict=True))
    assert len(pairs) == 2002  # all distinct but the repeated "key-7"
    assert (h1[7], h2[7]) == (h1[-1], h2[-1])
    other = fingerprints(keys, SEEDS + np.uint64(1))
    assert not np.array_equal(other[0], h1)  # another store's seeds: other fingerprints


def reference_fingerprint(key: bytes, seed1: int, seed2: int) -> tuple[int, int]:
    """The fingerprint's definition in plain Python: two chains over the key's little-endian 8-byte words."""
    mask = 2**64 - 1
    a = (len(key) * 0x9E3779B97F4A7C15 & mask) ^ seed1
    b = (len(key) * 0xD6E8FEB86659FD93 & mask) ^ seed2
    for p in range(0, len(key), 8):
        w = int.from_bytes(key[p : p + 8], "little")
        a ^= w
        a = ((a ^ (a >> 30)) * 0xBF58476D1CE4E5B9) & mask
        a = ((a ^ (a >> 27)) * 0x94D049BB133111EB) & mask
        a ^= a >> 31
        b ^= w
        b = ((b ^ (b >> 33)) * 0xFF51AFD7ED558CCD) & mask
        b = ((b ^ (b >> 33)) * 0xC4CEB9FE1A85EC53) & mask
        b ^= b >> 33
    return a, b


def test_fingerprints_follow_their_definition_at_every_length_and_offset() -> None:
    """Whole words are loaded at once (unaligned): the same hashes as word by word from the bytes, for keys
    of 0 to 40 bytes starting anywhere in the Arrow buffer, multi-byte UTF-8 included."""
    keys = ["x" * (i % 3) + "é€" * (i % 5) + "k" * i for i in range(41)]
    arr = as_string_array(keys).slice(1)  # an offset into the buffers
    h1, h2 = fingerprints(arr, SEEDS)
    for i, key in enumerate(keys[1:]):
        assert (int(h1[i]), int(h2[i])) == reference_fingerprint(key.encode(), 12345, 67890), key


def test_table_finds_what_was_placed_and_forgets_released_slots() -> None:
    """Removal shifts later entries of a probe run back: every other key stays findable, also in a small,
    crowded table (long runs that wrap around its end)."""
    rng = np.random.default_rng(0)
    n = 5000
    fp = rng.integers(0, 2**63, (n, 2), dtype=np.int64).astype(np.uint64)
    fp[:40, 0] = fp[0, 0]  # one long collision run
    slots = np.arange(n, dtype=np.int64)
    table = KeyTable(16)
    table.rebuild(16, fp, slots)
    assert table.size == 16384 and table.count == n
    np.testing.assert_array_equal(table.probe(fp, fp), slots)
    gone = np.r_[0:20, rng.choice(np.arange(40, n), 1000, replace=False)]
    rows = np.zeros((n, 1), np.float32)
    times = np.zeros(n, np.int64)
    key_len = np.ones(n, np.int32)
    free = np.empty(n, np.int64)
    queried = fp.copy()
    num_free, released = release_slots(gone, table.tab, table.shift, fp, rows, times, key_len, free, 0)
    assert (num_free, released) == (gone.size, gone.size) and (key_len[gone] == FREE).all()
    again = table.probe(queried, fp)
    kept = np.setdiff1d(slots, gone)
    assert (again[gone] == -1).all() and np.array_equal(again[kept], kept)
    other = queried[kept[:1]].copy()
    other[0, 1] ^= np.uint64(1)  # first half matches, the second differs: another key
    assert table.probe(other, fp)[0] == -1
    assert table.fits(1) and not table.fits(table.size)


def test_small_table_wrapping_around_its_end() -> None:
    fp = np.zeros((12, 2), np.uint64)
    fp[:, 0] = np.uint64(0xF) << np.uint64(60)  # every home is the last position: the run wraps to 0, 1, ...
    fp[:, 1] = np.arange(12, dtype=np.uint64)
    table = KeyTable(16)
    table.rebuild(16, fp[:6], np.arange(6))
    args = (
        np.zeros((12, 1), np.float32),
        np.zeros(12, np.int64),
        np.ones(12, np.int32),
        np.empty(12, np.int64),
    )
    release_slots(np.array([0, 3]), table.tab, table.shift, fp, *args, 0)
    assert table.probe(fp[:6], fp).tolist() == [-1, 1, 2, -1, 4, 5]


def test_snapshot_format_round_trips_and_refuses_other_shapes() -> None:
    rows = np.arange(24, dtype=np.float32).reshape(3, 8)
    table = snapshot_table(["a", "b", "c"], rows, np.array([1, 2, 3]), (1, 1, 8), 99, {"note": "x"})
    keys, back, times, watermark, meta = read_snapshot_table(table, (1, 1, 8))
    assert keys.to_pylist() == ["a", "b", "c"] and watermark == 99 and meta == {"note": "x"}
    np.testing.assert_array_equal(back, rows)
    np.testing.assert_array_equal(times, [1, 2, 3])
    with pytest.raises(ValueError, match="does not match"):
        read_snapshot_table(table, (2, 1, 8))
    assert isinstance(keys, pa.ChunkedArray)


def test_store_works_where_numba_can_cache_nowhere() -> None:
    """A read-only install without a writable user cache (numba finds no cache folder): the kernels compile
    in the process instead of failing the import."""
    probe = (
        "from rnnstream.rnn_core.state_store import KeyedStateStore\n"
        "print(KeyedStateStore((1, 1, 2)).lookup(['a', 'b', 'a']).tolist())\n"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"}  # none outside IPython
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[0, 1, 0]"
