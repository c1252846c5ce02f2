"""The compiled JSON reader gives exactly pyarrow.json's columns, and hands anything unusual back to it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from rnnstream.pipelines.sample_stream import sample_events, sample_schema
from rnnstream.workers.event_codec import JSON, EventDecoder, RawMessage, message_headers, table_to_json
from tests.workers.codec_cases import NOW_MS, bad_cases, good_event, js


def _messages(schema, values):
    h = message_headers(schema, JSON)
    return [RawMessage("t", 0, i, NOW_MS, None, v, h) for i, v in enumerate(values)]


def _both(schema, values):
    fast = EventDecoder(schema)
    slow = EventDecoder(schema)
    slow._fast_json = None
    msgs = _messages(schema, values)
    return fast.decode(msgs, now_ms=NOW_MS), slow.decode(msgs, now_ms=NOW_MS)


def _same(a, b):
    assert a.batch.equals(b.batch)
    assert [(r.reason, r.detail, r.raw) for r in a.rejects] == [
        (r.reason, r.detail, r.raw) for r in b.rejects
    ]
    assert np.array_equal(a.offset, b.offset)


def test_numbers_and_shapes_read_as_pyarrow_json_reads_them():
    schema = sample_schema("fastjson")
    rng = np.random.default_rng(0)
    values = table_to_json(sample_events(schema, 3000, 50, seed=1, start_ms=NOW_MS - 100_000))
    texts = ["0", "-0", "-0.0", "1e5", "1E-5", "2.5e+3", "123456789012345678", "0.1", "-7.000001",
             "3.14159265358979", "1e22", "9007199254740992", "0.3000000000000000", "1e-22",
             "12.5e-1"]  # fmt: skip
    for i in range(400):  # hand-written numbers, reordered fields, whitespace
        num = texts[i % len(texts)]
        emb = ", ".join(texts[(i + j) % len(texts)] for j in range(4))
        body = f'"emb" : [ {emb} ],\n "kind":"b", "time": {NOW_MS - i}, "key": "k{i % 7}",\t"value": {num}, '
        values.append(f'{{ {body}"amount": {float(rng.normal()):.6g}, "label": {i % 2} }}'.encode())
    fast, slow = _both(schema, values)
    assert fast.num_valid == len(values)
    _same(fast, slow)
    buf = np.frombuffer(b"".join(values), np.uint8)
    lens = np.array([len(v) for v in values])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    assert EventDecoder(schema)._fast_json.columns(buf, starts, lens) is not None  # the compiled path ran


def test_anything_unusual_goes_to_pyarrow_json_with_the_same_outcome():
    schema = sample_schema("fastjson")
    unusual = [
        js(good_event(key="caf\u00e9")),  # non-ASCII
        js(good_event(key='a"b')),  # escape
        js({**good_event(), "extra": [1, {"a": 2}]}),  # a field not in the schema
        b'{"key":"k","time":1,"value":9007199254740993,"amount":2,"emb":[1,2,3,4],"kind":"a","label":1}',
        js(good_event(value=0.30000000000000004)),  # beyond the fast path digits
        js(good_event(value=1e300)),
        b'{"key":"k","time":1.5e3,"value":1,"amount":2,"emb":[1,2,3,4],"kind":"a","label":1}',
        js(good_event(emb=[1, 2, 3])),
        js(good_event(value=None)),
        js({k: v for k, v in good_event().items() if k != "label"}),
    ]
    cases = [v for _, v, h, _ in bad_cases(schema) if h == message_headers(schema, JSON)]
    for extra in [*unusual, *cases]:
        values = [js(good_event(key=f"k{i}")) for i in range(5)] + [extra]
        fast, slow = _both(schema, values)
        _same(fast, slow)
        assert fast.num_valid + len(fast.rejects) == len(values)
    assert json.loads(unusual[0])["key"] == "caf\u00e9"


def test_a_wide_vector_schema_round_trips():
    from rnnstream.rnn_core.event_schema import EventSchema

    schema = EventSchema(pipeline="fastwide", version=1, vectors=(("x", 31),))
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(500, 31)), 3).astype(np.float32)
    table = pa.table(
        {
            "key": pa.array([f"k{i}" for i in range(500)]),
            "time": pa.array(NOW_MS - np.arange(500), pa.int64()).cast(pa.timestamp("ms")),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 31),
        },
        schema=schema.arrow_schema(),
    )
    fast, slow = _both(schema, table_to_json(table))
    _same(fast, slow)
    assert fast.batch.column(2).flatten().to_numpy().reshape(-1, 31).tolist() == x.tolist()
