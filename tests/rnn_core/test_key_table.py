"""The state store's parts alone: fingerprints, the probe table, and the snapshot format."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rnnstream.rnn_core.key_hashing import as_string_array, fingerprints
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


def test_table_finds_what_was_inserted_and_forgets_removed() -> None:
    rng = np.random.default_rng(0)
    h1 = rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64)
    h2 = rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64)
    slots = np.arange(5000, dtype=np.int64)
    table = KeyTable(16)
    table.rebuild(4 * 5000, h1, slots)
    found, tpos = table.probe(h1, h2, h2)
    np.testing.assert_array_equal(found, slots)
    table.remove(tpos[:100])
    again, _ = table.probe(h1, h2, h2)
    assert (again[:100] == -1).all() and np.array_equal(again[100:], slots[100:])
    stored_h2 = h2.copy()
    stored_h2[200] ^= np.uint64(1)  # first half matches, the stored second half differs: another key
    assert table.probe(h1[200:201], h2[200:201], stored_h2)[0][0] == -1
    assert table.fits(1) and not table.fits(table.size)


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
