"""Clean Arrow messages checked as one table decode exactly as one message at a time; unclean ones still go
message by message with the same rejects."""

from __future__ import annotations

import numpy as np

from rnnstream.pipelines.sample_stream import sample_events, sample_schema
from rnnstream.workers.event_codec import ARROW, EventDecoder, RawMessage, encode_arrow, message_headers
from tests.workers.codec_cases import NOW_MS, bad_cases


def _decode_both(schema, msgs):
    together = EventDecoder(schema)
    alone = EventDecoder(schema)
    alone._decode_arrow_together = lambda *a: None
    return together.decode(msgs, now_ms=NOW_MS), alone.decode(msgs, now_ms=NOW_MS)


def _same(a, b):
    assert a.batch.equals(b.batch)
    assert a.events_in == b.events_in
    for name in ("partition", "offset", "timestamp_ms", "event_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    why = [(r.reason, r.detail, r.raw, r.event_index, r.offset) for r in a.rejects]
    assert why == [(r.reason, r.detail, r.raw, r.event_index, r.offset) for r in b.rejects]


def test_clean_and_unclean_arrow_messages():
    schema = sample_schema("together")
    h = message_headers(schema, ARROW)
    table = sample_events(schema, 900, 40, seed=2, start_ms=NOW_MS - 100_000)
    values = [encode_arrow(table.slice(a, 150), schema) for a in range(0, 900, 150)]
    msgs = [RawMessage("t", 1, 10 + i, NOW_MS - i, None, v, h) for i, v in enumerate(values)]
    a, b = _decode_both(schema, msgs)
    assert a.num_valid == 900 and sorted(set(a.event_index.tolist())) == list(range(150))
    _same(a, b)
    assert EventDecoder(schema)._decode_arrow_together(msgs, list(range(6)), np.full(6, NOW_MS)) is not None
    for _, value, headers, _ in bad_cases(schema):
        if headers == h:  # each bad Arrow message among clean ones
            _same(*_decode_both(schema, [*msgs[:3], RawMessage("t", 1, 99, NOW_MS, None, value, h)]))
