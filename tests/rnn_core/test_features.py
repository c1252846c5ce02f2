"""features_from_arrow: the documented row layout, unknown categories, and clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rnnstream.rnn_core.config import FeatureSpec
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.rnn_core.features import feature_slices, features_from_arrow

SCHEMA = EventSchema(
    pipeline="t",
    version=1,
    numeric=("amount", "hour"),
    vectors=(("emb", 3),),
    categorical=(("merchant", ("shop", "fuel", "bar")), ("country", ("fr", "de"))),
    has_label=True,
)


def _batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "key": ["a", "b", "a"],
            "time": pa.array([1000, 2000, 3500], type=pa.timestamp("ms")),
            "amount": [1.5, -2.0, 3.25],
            "hour": [0.0, 23.0, 12.0],
            "emb": pa.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], type=pa.list_(pa.float32(), 3)),
            "merchant": ["fuel", "casino", "shop"],
            "country": ["de", "fr", "xx"],
            "label": pa.array([0, None, 1], type=pa.int64()),
        },
        schema=SCHEMA.arrow_schema(),
    )


def test_layout_numeric_vectors_codes_then_time_delta():
    spec = SCHEMA.feature_spec()
    x = features_from_arrow(_batch(), spec)
    assert x.dtype == np.float32
    assert x.shape == (3, spec.input_size) == (3, 2 + 3 + 2 + 1)
    np.testing.assert_array_equal(x[:, :2], [[1.5, 0.0], [-2.0, 23.0], [3.25, 12.0]])
    np.testing.assert_array_equal(x[:, 2:5], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    # merchant: fuel -> 2, unknown "casino" -> 0, shop -> 1; country: de -> 2, fr -> 1, xx -> 0
    np.testing.assert_array_equal(x[:, 5:7], [[2, 2], [0, 1], [1, 0]])
    np.testing.assert_array_equal(x[:, 7], [0, 0, 0])  # time delta is the scorer's job
    cont, cat, dt = feature_slices(spec)
    assert (cont, cat, dt) == (slice(0, 5), slice(5, 7), 7)


def test_table_with_chunks_and_sliced_batch_match():
    spec = SCHEMA.feature_spec(use_time_delta=False)
    batch = _batch()
    table = pa.Table.from_batches([batch.slice(0, 1), batch.slice(1, 2)])
    np.testing.assert_array_equal(features_from_arrow(table, spec), features_from_arrow(batch, spec))
    np.testing.assert_array_equal(
        features_from_arrow(batch.slice(1, 2), spec), features_from_arrow(batch, spec)[1:]
    )


def test_missing_column_and_null_numeric_are_named():
    spec = FeatureSpec(numeric=("amount", "missing"))
    with pytest.raises(ValueError, match="missing"):
        features_from_arrow(_batch(), spec)
    nulls = pa.table({"amount": pa.array([1.0, None])})
    with pytest.raises(ValueError, match="amount"):
        features_from_arrow(nulls, FeatureSpec(numeric=("amount",)))


def test_wrong_vector_size_is_rejected():
    spec = FeatureSpec(vectors=("emb",), vector_sizes=(4,))
    with pytest.raises(ValueError, match="emb"):
        features_from_arrow(_batch(), spec)
