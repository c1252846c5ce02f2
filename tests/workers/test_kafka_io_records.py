"""The compiled v2 record writer and reader agree byte for byte with kafka-python's own."""

import numpy as np
import pyarrow as pa
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from rnnstream.workers.kafka_io_records import BATCH_HEADER_BYTES, encode_records, parse_records


def _kafka_python_batch(pairs):
    b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 10**9)
    for i, (k, v) in enumerate(pairs):
        b.append(i, 1000, k, v, [])
    return bytes(b.build())


def test_records_are_what_kafka_python_writes_and_cut_at_batch_size():
    rng = np.random.default_rng(0)
    keys = [None if i % 97 == 0 else f"k-{i}-ü".encode() for i in range(3000)]
    values = [bytes(rng.integers(0, 256, int(rng.integers(0, 400))).astype(np.uint8)) for _ in range(3000)]
    k_arr, v_arr = pa.array(keys, pa.binary()).slice(7), pa.array(values, pa.binary()).slice(7)
    records, starts, firsts = encode_records(k_arr, v_arr, 64 * 1024)
    assert len(firsts) > 3 and firsts[0] == 0 and firsts[-1] == len(v_arr)
    pairs = list(zip(keys[7:], values[7:], strict=True))
    for b in range(len(firsts) - 1):
        a, z = int(firsts[b]), int(firsts[b + 1])
        ref = _kafka_python_batch(pairs[a:z])
        body = records[starts[b] : starts[b + 1]].tobytes()
        assert ref[BATCH_HEADER_BYTES:] == body
        assert BATCH_HEADER_BYTES + len(body) <= 64 * 1024
        fields = parse_records(records, int(starts[b]), int(starts[b + 1]), z - a)
        assert fields is not None
        assert fields[:, 1].tolist() == list(range(z - a))  # offset deltas
        got = [
            (None if kl < 0 else records[ks : ks + kl].tobytes(), records[vs : vs + vl].tobytes())
            for ks, kl, vs, vl in fields[:, 2:6]
        ]
        assert got == pairs[a:z]
        # and kafka-python reads the batch we would send
        batch = DefaultRecordBatch(bytearray(ref))
        assert [(r.key, r.value) for r in batch] == pairs[a:z]


def test_strings_and_a_malformed_body():
    records, _, firsts = encode_records(pa.array(["a", "é"]), pa.array(["x", ""]), 10**6)
    assert firsts.tolist() == [0, 2]
    assert records.tobytes() == _kafka_python_batch([(b"a", b"x"), ("é".encode(), b"")])[BATCH_HEADER_BYTES:]
    assert parse_records(records, 0, len(records), 3) is None  # one record more than there is
    assert parse_records(records[:-1], 0, len(records) - 1, 2) is None  # truncated
