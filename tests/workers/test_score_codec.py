"""JSON score values built column-wise read back as the scores they encode, whatever the key or the number."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from rnnstream.workers.score_codec import decode_scores, scores_to_json_array

KEYS = ["k0", 'quote"d', "back\\slash", "tab\tand\nnewline", "ünïcode", "\x7f", " ", "😀", "a/b", "\x00"]


def scores_to_json(*args) -> list[bytes]:
    """One JSON message value per scored event, as the worker sends them."""
    return scores_to_json_array(*args).to_pylist()


def test_each_value_reads_back_as_its_score_with_keys_written_as_json_dumps_writes_them():
    rng = np.random.default_rng(3)
    n = len(KEYS)
    outputs = np.array(
        [
            [0.0, -0.0],
            [1e-5, 1e16],
            [3.4e38, -5.0],
            [1e-45, 123456.0],
            [1e-7, 1e21],
            [2.0**60, 1.5],
            *rng.normal(size=(n - 6, 2)).tolist(),
        ],
        np.float32,
    )
    times = rng.integers(0, 2**41, n)
    offsets = rng.integers(0, 2**40, n)
    indexes = rng.integers(0, 100, n).astype(np.int32)
    names = ("score", 'odd"name')
    values = scores_to_json(pa.array(KEYS), times, outputs, names, "v:1", 'top"ic', 3, offsets, indexes)
    assert len(values) == n
    for i, value in enumerate(values):
        assert value.startswith(b'{"key":' + json.dumps(KEYS[i]).encode() + b",")
        row = json.loads(value)
        assert list(row) == ["key", "time", *names, "model_version", "topic", "partition", "offset", "index"]
        assert row["key"] == KEYS[i] and row["time"] == int(times[i])
        for j, name in enumerate(names):
            assert type(row[name]) is float and np.float32(row[name]) == outputs[i, j]  # a float, always
            assert row[name] == float(outputs[i, j])  # the float32 value exactly
        assert (row["model_version"], row["topic"], row["partition"]) == ("v:1", 'top"ic', 3)
        assert (row["offset"], row["index"]) == (int(offsets[i]), int(indexes[i]))
    none = np.zeros(0, np.int64)
    empty = scores_to_json(
        pa.array([], pa.string()), none, np.zeros((0, 2), np.float32), names, "v", "t", 0, none, none
    )
    assert empty == []


def test_a_json_score_without_header_decodes_as_json():
    (value,) = scores_to_json(
        ["k"],
        np.array([5]),
        np.array([[0.25]], np.float32),
        ("score",),
        "v",
        "t",
        0,
        np.array([7]),
        np.array([0]),
    )
    table = decode_scores(value, None)
    row = {"key": "k", "time": 5, "score": 0.25, "model_version": "v", "topic": "t", "partition": 0}
    assert table.to_pylist() == [{**row, "offset": 7, "index": 0}]


def test_non_finite_outputs_are_written_as_json_dumps_writes_them():
    """A diverged forecast (inf) or an undefined statistic (NaN) still makes a record json.loads reads."""
    outputs = np.array([[np.nan, 1.0], [np.inf, -np.inf], [0.5, 2.0]], np.float32)
    n = len(outputs)
    zeros = np.zeros(n, np.int64)
    values = scores_to_json(
        pa.array(["a", "b", "c"]), zeros, outputs, ("score", "x"), "v", "t", 0, zeros, zeros.astype(np.int32)
    )
    rows = [json.loads(v) for v in values]
    assert np.isnan(rows[0]["score"]) and rows[0]["x"] == 1.0
    assert rows[1]["score"] == float("inf") and rows[1]["x"] == float("-inf")
    assert (rows[2]["score"], rows[2]["x"]) == (0.5, 2.0)
    assert b"NaN" in values[0] and b"-Infinity" in values[1]
