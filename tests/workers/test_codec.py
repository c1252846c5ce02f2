"""Event codec: round trips, every kind of bad input rejected with the right reason, never raising."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from rnnstream.pipelines.sample_stream import sample_events, sample_schema
from rnnstream.workers.event_codec import (
    ARROW,
    JSON,
    REASONS,
    EventDecoder,
    RawMessage,
    decode,
    encode_arrow,
    message_headers,
    table_to_json,
    validate_event,
)
from tests.workers.codec_cases import NOW_MS, SCHEMA, bad_cases, good_event, js

CASES = bad_cases(SCHEMA)


def msg(value: bytes, headers: list, offset: int = 0, partition: int = 0) -> RawMessage:
    return RawMessage("codectest.events", partition, offset, NOW_MS + offset, b"k", value, headers)


def test_at_least_20_kinds_of_bad_input() -> None:
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)
    assert {c[3] for c in CASES} <= set(REASONS)


@pytest.mark.parametrize(("name", "value", "headers", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_alone(name: str, value: bytes, headers: list, reason: str) -> None:
    d = decode([msg(value, headers, offset=7, partition=2)], SCHEMA, now_ms=NOW_MS)
    d.check_invariant()
    assert d.num_valid == 0
    assert [r.reason for r in d.rejects] == [reason], d.rejects
    r = d.rejects[0]
    assert (r.topic, r.partition, r.offset) == ("codectest.events", 2, 7)
    if r.event_index is None:
        assert r.raw == value  # raw bytes unchanged


def test_bad_inputs_among_good_ones_in_one_batch() -> None:
    """Fast path fails on the batch; every bad message still gets its reason, good ones survive in order."""
    jh = message_headers(SCHEMA, JSON)
    msgs, expected = [], []
    for i, (_, value, headers, reason) in enumerate(CASES):
        msgs.append(msg(js(good_event(key=f"g{i}", time=NOW_MS - i)), jh, offset=2 * i))
        msgs.append(msg(value, headers, offset=2 * i + 1))
        expected.append(reason)
    d = decode(msgs, SCHEMA, now_ms=NOW_MS)
    d.check_invariant()
    assert d.num_valid == len(CASES)
    assert d.batch.column("key").to_pylist() == [f"g{i}" for i in range(len(CASES))]
    assert d.offset.tolist() == [2 * i for i in range(len(CASES))]
    assert sorted((r.offset, r.reason) for r in d.rejects) == [(2 * i + 1, e) for i, e in enumerate(expected)]


def test_fast_path_row_checks_agree_with_validator() -> None:
    """Messages that the bulk JSON parser accepts but that fail row checks get the validator's reason."""
    jh = message_headers(SCHEMA, JSON)
    bad = [
        (js(good_event(key="")), "empty_key"),
        (js(good_event(time=-5)), "time_out_of_range"),
        (js({k: v for k, v in good_event().items() if k != "amount"}), "missing_field"),
        (js(good_event(emb=[1, 2])), "wrong_vector_length"),
        (js(good_event(emb=[1, 1e39, 2, 3])), "not_finite"),
        (js(good_event(amount=None)), "null_value"),
    ]
    msgs = [msg(js(good_event()), jh, 0)] + [msg(v, jh, i + 1) for i, (v, _) in enumerate(bad)]
    d = decode(msgs, SCHEMA, now_ms=NOW_MS)
    d.check_invariant()
    assert d.num_valid == 1
    assert [r.reason for r in d.rejects] == [r for _, r in bad]


def test_unknown_categorical_passes_through() -> None:
    d = decode([msg(js(good_event(kind="never-seen")), [])], SCHEMA, now_ms=NOW_MS)
    assert d.num_valid == 1 and d.batch.column("kind").to_pylist() == ["never-seen"]


def test_message_without_headers_is_read_as_json() -> None:
    d = decode([msg(js(good_event()), [])], SCHEMA, now_ms=NOW_MS)
    assert d.num_valid == 1 and not d.rejects


def test_unknown_json_fields_are_ignored_and_label_optional() -> None:
    ev = good_event(extra={"nested": [1, 2]})
    del ev["label"]
    d = decode([msg(js(ev), [])], SCHEMA, now_ms=NOW_MS)
    assert d.num_valid == 1 and d.batch.column("label").to_pylist() == [None]


def test_pretty_printed_json_with_newlines() -> None:
    pretty = json.dumps(good_event(), indent=2).encode()
    d = decode([msg(pretty, []), msg(js(good_event()), [], 1)], SCHEMA, now_ms=NOW_MS)
    assert d.num_valid == 2 and not d.rejects


@pytest.mark.parametrize("encoding", [JSON, ARROW])
def test_round_trip_every_field_equal(encoding: str) -> None:
    table = sample_events(SCHEMA, 3000, 40, seed=11, start_ms=NOW_MS - 3_000_000)
    if encoding == JSON:
        msgs = [msg(v, message_headers(SCHEMA, JSON), i) for i, v in enumerate(table_to_json(table))]
    else:
        msgs = [msg(encode_arrow(table.slice(i, 1000), SCHEMA), message_headers(SCHEMA, ARROW), i // 1000)
                for i in range(0, 3000, 1000)]  # fmt: skip
    d = decode(msgs, SCHEMA, now_ms=NOW_MS)
    d.check_invariant()
    assert not d.rejects
    assert d.batch.schema.equals(SCHEMA.arrow_schema(), check_metadata=True)
    assert pa.Table.from_batches([d.batch]).equals(table)
    if encoding == ARROW:
        assert d.event_index.tolist() == list(range(1000)) * 3
        assert d.offset.tolist() == [0] * 1000 + [1] * 1000 + [2] * 1000


def test_arrow_bad_rows_rejected_individually() -> None:
    table = sample_events(SCHEMA, 6, 2, seed=4, start_ms=NOW_MS - 10_000)
    vals = table.column("value").to_pylist()
    vals[1] = math.inf
    keys = table.column("key").to_pylist()
    keys[3] = ""
    times = table.column("time").cast(pa.int64()).to_pylist()
    times[5] = NOW_MS + 10**12
    table = table.set_column(0, "key", pa.array(keys)).set_column(2, "value", pa.array(vals))
    table = table.set_column(1, "time", pa.array(times, pa.timestamp("ms")))
    d = decode([msg(encode_arrow(table), message_headers(SCHEMA, ARROW), 9)], SCHEMA, now_ms=NOW_MS)
    d.check_invariant()
    assert d.events_in == 6 and d.num_valid == 3
    assert d.event_index.tolist() == [0, 2, 4]
    assert [(r.event_index, r.reason) for r in d.rejects] == [
        (1, "not_finite"), (3, "empty_key"), (5, "time_out_of_range")]  # fmt: skip
    # a row reject carries that row as a one-row Arrow stream
    row = pa.ipc.open_stream(d.rejects[1].raw).read_all()
    assert row.num_rows == 1 and row.column("key").to_pylist() == [""]


def test_arrow_mixed_with_json_keeps_message_order() -> None:
    t = sample_events(SCHEMA, 4, 2, seed=8, start_ms=NOW_MS - 10_000)
    msgs = [
        msg(js(good_event(key="j0")), [], 0),
        msg(encode_arrow(t, SCHEMA), message_headers(SCHEMA, ARROW), 1),
        msg(js(good_event(key="j2")), [], 2),
    ]
    d = decode(msgs, SCHEMA, now_ms=NOW_MS)
    assert d.batch.column("key").to_pylist() == ["j0", *t.column("key").to_pylist(), "j2"]
    assert d.offset.tolist() == [0, 1, 1, 1, 1, 2]


def test_decode_never_raises_on_random_bytes() -> None:
    rng = np.random.default_rng(0)
    good = js(good_event())
    arrow = encode_arrow(sample_events(SCHEMA, 3, 2, seed=1, start_ms=NOW_MS - 10_000), SCHEMA)
    msgs = []
    for i in range(300):
        base = good if i % 2 else arrow
        b = bytearray(base)
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        hdr = message_headers(SCHEMA, JSON if i % 2 else ARROW)
        msgs.append(msg(bytes(b[: int(rng.integers(0, len(b) + 1))]), hdr, i))
    d = EventDecoder(SCHEMA).decode(msgs, now_ms=NOW_MS)
    d.check_invariant()
    assert d.messages_in == 300


def test_validator_normalizes() -> None:
    out = validate_event(good_event(), SCHEMA, NOW_MS)
    assert isinstance(out, dict) and out["emb"] == [0.5, 1.0, 2.0, 3.0] and out["value"] == 1.5
    assert validate_event(good_event(key=""), SCHEMA, NOW_MS)[0] == "empty_key"


def test_schema_with_only_numbers() -> None:
    s = sample_schema("tiny").__class__(pipeline="tiny", version=3, numeric=("x",))
    d = decode([msg(b'{"key":"a","time":5,"x":2}', [])], s, now_ms=NOW_MS)
    assert d.num_valid == 1 and d.batch.column("x").to_pylist() == [2.0]


@pytest.mark.parametrize("encoding", [JSON, ARROW])
def test_future_check_follows_the_message_timestamp_not_the_clock(encoding: str) -> None:
    """An event 8 days after its message's timestamp (the limit is 7) is "in the future" whenever it is
    decoded, and is not once its message is as late: a replay decides exactly as the first pass did."""
    ahead = good_event(time=NOW_MS + 8 * 86_400_000)
    value = js(ahead) if encoding == JSON else encode_arrow(pa.Table.from_pylist([ahead]), SCHEMA)
    headers = message_headers(SCHEMA, encoding)
    decoder = EventDecoder(SCHEMA)
    early = RawMessage("codectest.events", 0, 0, NOW_MS, b"k", value, headers)
    late = early._replace(timestamp=NOW_MS + 8 * 86_400_000)
    for clock in (NOW_MS, NOW_MS + 10 * 86_400_000):
        assert [r.reason for r in decoder.decode([early], now_ms=clock).rejects] == ["time_out_of_range"]
        assert decoder.decode([late], now_ms=clock).num_valid == 1


@pytest.mark.parametrize("emb_type", [None, pa.list_(pa.float64())], ids=["fixed_float32", "list_float64"])
def test_arrow_vector_values_checked_in_either_layout(emb_type: pa.DataType | None) -> None:
    """Vectors that arrive as the model reads them (``fixed_size_list<float32>`` of the schema's size, what
    EventProducer sends) are checked in place, without a float64 copy; a row with a NaN, an infinity, a
    float32 overflow or a null value in its vector is rejected exactly as in the list<float64> layout, and
    the valid rows keep their values."""
    table = sample_events(SCHEMA, 7, 3, seed=6, start_ms=NOW_MS - 10_000)
    i = table.schema.get_field_index("emb")
    emb_type = emb_type or table.schema.field("emb").type
    rows = table.column("emb").to_pylist()
    rows[1][2] = math.nan
    rows[3][0] = -math.inf
    rows[4][3] = None
    rows[6][1] = 1e39
    table = table.set_column(i, pa.field("emb", emb_type), pa.array(rows, emb_type))
    d = decode([msg(encode_arrow(table), message_headers(SCHEMA, ARROW), 3)], SCHEMA, now_ms=NOW_MS)
    d.check_invariant()
    assert d.event_index.tolist() == [0, 2, 5]
    reasons = {r.event_index: r.reason for r in d.rejects}
    assert reasons == {1: "not_finite", 3: "not_finite", 4: "null_value", 6: "not_finite"}
    want = np.array([rows[j] for j in (0, 2, 5)], np.float32)
    np.testing.assert_array_equal(np.stack(d.batch.column("emb").to_numpy(zero_copy_only=False)), want)
