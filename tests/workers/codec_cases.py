"""Bad-input cases shared by the codec and Kafka tests: (name, value bytes, headers, expected reason)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from rnnstream.pipelines.sample_stream import sample_events, sample_schema
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.workers.event_codec import ARROW, JSON, encode_arrow, message_headers

NOW_MS = 1_767_225_600_000 + 86_400_000  # 2026-01-02


def good_event(**changes: object) -> dict:
    ev = {"key": "k1", "time": NOW_MS - 1000, "value": 1.5, "amount": -2.0, "emb": [0.5, 1, 2, 3],
          "kind": "a", "label": 1}  # fmt: skip
    ev.update(changes)
    return ev


def without(field: str) -> dict:
    ev = good_event()
    del ev[field]
    return ev


def js(ev: object) -> bytes:
    return json.dumps(ev).encode()


def bad_cases(schema: EventSchema) -> list[tuple[str, bytes, list[tuple[str, bytes]], str]]:
    """At least 20 kinds of bad input, each with the reason decode must give."""
    jh = message_headers(schema, JSON)
    ah = message_headers(schema, ARROW)
    good_arrow = encode_arrow(sample_events(schema, 5, 3, seed=1, start_ms=NOW_MS - 10_000), schema)
    other = sample_schema("otherpipe")
    other_arrow = encode_arrow(sample_events(other, 5, 3, seed=1, start_ms=NOW_MS - 10_000), other)
    bad_row = sample_events(schema, 1, 1, seed=2, start_ms=NOW_MS - 10_000)
    nan_row = bad_row.set_column(2, "value", pa.array([float("nan")]))
    missing_col = sample_events(schema, 3, 1, seed=3, start_ms=NOW_MS - 10_000).drop_columns(["amount"])
    string_col = missing_col.append_column("amount", pa.array(["x", "y", "z"]))
    numeric_text_col = missing_col.append_column("amount", pa.array(["1.5", "2", "3"]))  # castable text
    bool_col = missing_col.append_column("amount", pa.array([True, False, True]))
    overflow_row = bad_row.set_column(2, "value", pa.array([1e39]))
    v2 = EventSchema(**{**schema.to_dict(), "version": 2, "vectors": (("emb", 4),),
                        "categorical": (("kind", ("a", "b", "c")),)})  # fmt: skip
    return [
        ("garbage bytes", b"\x00\x01garbage", jh, "not_json"),
        ("invalid utf-8", b'{"key": "\xff\xfe"}', jh, "not_json"),
        ("empty message", b"", jh, "not_json"),
        ("truncated json", js(good_event())[:-5], jh, "not_json"),
        ("two objects", js(good_event()) + js(good_event()), jh, "not_json"),
        ("json array", b"[1, 2, 3]", jh, "not_object"),
        ("json number", b"42", jh, "not_object"),
        ("missing key", js(without("key")), jh, "missing_field"),
        ("empty key", js(good_event(key="")), jh, "empty_key"),
        ("key not a string", js(good_event(key=17)), jh, "wrong_type"),
        ("missing time", js(without("time")), jh, "missing_field"),
        ("time as string", js(good_event(time="2026-01-01")), jh, "wrong_type"),
        ("time as float", js(good_event(time=1.5e12)), jh, "wrong_type"),
        ("time before 1970", js(good_event(time=-1000)), jh, "time_out_of_range"),
        ("time far in future", js(good_event(time=4_102_444_800_000)), jh, "time_out_of_range"),
        ("missing numeric", js(without("amount")), jh, "missing_field"),
        ("null numeric", js(good_event(amount=None)), jh, "null_value"),
        ("numeric as string", js(good_event(amount="3.5")), jh, "wrong_type"),
        ("numeric as bool", js(good_event(amount=True)), jh, "wrong_type"),
        (
            "NaN",
            b'{"key":"k","time":%d,"value":NaN,"amount":1,"emb":[1,2,3,4],"kind":"a"}' % NOW_MS,
            jh,
            "not_finite",
        ),
        (
            "Infinity",
            b'{"key":"k","time":%d,"value":1,"amount":-Infinity,"emb":[1,2,3,4],"kind":"a"}' % NOW_MS,
            jh,
            "not_finite",
        ),
        ("number overflow 1e400", js(good_event()).replace(b"1.5", b"1e400"), jh, "not_finite"),
        ("integer too large for a double", js(good_event(amount=10**400)), jh, "not_finite"),
        ("vector too short", js(good_event(emb=[1, 2, 3])), jh, "wrong_vector_length"),
        ("vector too long", js(good_event(emb=[1, 2, 3, 4, 5])), jh, "wrong_vector_length"),
        ("vector not a list", js(good_event(emb=3)), jh, "wrong_type"),
        ("vector element string", js(good_event(emb=[1, "2", 3, 4])), jh, "wrong_type"),
        ("vector element null", js(good_event(emb=[1, None, 3, 4])), jh, "null_value"),
        ("vector float32 overflow", js(good_event(emb=[1, 1e39, 3, 4])), jh, "not_finite"),
        ("numeric float32 overflow", js(good_event(amount=1e39)), jh, "not_finite"),
        ("lone surrogate in key", js(good_event()).replace(b'"k1"', b'"\\ud800"'), jh, "invalid_text"),
        ("categorical not a string", js(good_event(kind=3)), jh, "wrong_type"),
        ("label not an int", js(good_event(label=0.5)), jh, "wrong_type"),
        ("1 MB message", js(good_event(pad="x" * 1_000_000)), jh, "too_large"),
        ("unknown encoding header", js(good_event()), [("rnnstream-encoding", b"avro")], "unknown_encoding"),
        ("other pipeline header", js(good_event()), message_headers(other, JSON), "wrong_pipeline"),
        ("other schema version", js(good_event()), message_headers(v2, JSON), "wrong_schema_version"),
        ("version header not int", js(good_event()), [("rnnstream-schema-version", b"v1")], "bad_header"),
        ("arrow header on json", js(good_event()), ah, "not_arrow"),
        ("json header on arrow", good_arrow, jh, "not_json"),
        ("truncated arrow", good_arrow[: len(good_arrow) // 2], ah, "truncated_arrow"),
        ("arrow of another pipeline", other_arrow, ah, "wrong_pipeline"),
        ("arrow missing column", encode_arrow(missing_col), ah, "wrong_schema"),
        ("arrow column of wrong type", encode_arrow(string_col), ah, "wrong_schema"),
        ("arrow row with NaN", encode_arrow(nan_row), ah, "not_finite"),
        ("arrow row with float32 overflow", encode_arrow(overflow_row), ah, "not_finite"),
        ("arrow numbers as text", encode_arrow(numeric_text_col), ah, "wrong_schema"),
        ("arrow numbers as bools", encode_arrow(bool_col), ah, "wrong_schema"),
    ]


def mixed_good_events(schema: EventSchema, n: int) -> list[dict]:
    rng = np.random.default_rng(5)
    return [
        good_event(key=f"k{i % 7}", value=float(rng.normal()), kind=str(rng.choice(["a", "b", "new"])))
        for i in range(n)
    ]


SCHEMA = sample_schema("codectest")
