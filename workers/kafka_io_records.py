"""Kafka's v2 record layout, written and read by compiled loops over whole arrays (no Python object a record).

A v2 record batch holds, after its 61-byte header, records of the form::

    length varint | attributes int8 | timestampDelta varint | offsetDelta varint |
    keyLength varint | key | valueLength varint | value | headerCount varint | headers

(every varint zig-zag encoded, as in Kafka's protocol; a null key or value has length -1).

:func:`encode_records` writes the records of many (key, value) pairs, cut into batches of at most
``batch_bytes``, from Arrow's binary layout (offsets + data); :func:`parse_records` reads the records of an
uncompressed batch body into arrays of positions. kafka-python does both one record at a time in Python
(a few microseconds a record); these are the scoring worker's bulk paths (:mod:`kafka_io_bulk_send`,
:mod:`kafka_io_fast_fetch`). Compiled once per machine with numba's on-disk cache, as the state store's
kernels are (:mod:`rnnstream.rnn_core.key_kernels`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.compiled_loop import compiled

BATCH_HEADER_BYTES = 61  # v2 record batch header: base offset .. record count
MAX_VARINT_BYTES = 5  # a zig-zag int32
RECORD_OVERHEAD_BYTES = 1 + 1 + 4 * MAX_VARINT_BYTES + 1  # attributes, ts delta 0, 4 varints, 0 headers


_kernel = compiled()


@_kernel
def _varint_size(value):
    z = (value << 1) ^ (value >> 63)
    size = 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


@_kernel
def _put_varint(out, pos, value):
    z = (value << 1) ^ (value >> 63)
    while z >= 0x80:
        out[pos] = (z & 0x7F) | 0x80
        z >>= 7
        pos += 1
    out[pos] = z
    return pos + 1


@_kernel
def _encode(key_offs, key_data, key_null, val_offs, val_data, batch_bytes, out, batch_first, batch_pos):
    """Records of pairs ``i`` into ``out``; returns (bytes written, batches). ``batch_first[b]``: first pair
    of batch ``b`` (offset deltas restart at 0 in each), ``batch_pos[b]`` where its records start in ``out``;
    one more entry each: n and the end."""
    n = len(val_offs) - 1
    pos = 0
    batches = 0
    first = 0
    in_batch = BATCH_HEADER_BYTES
    batch_first[0] = 0
    batch_pos[0] = 0
    for i in range(n):
        klen = -1 if key_null[i] else key_offs[i + 1] - key_offs[i]
        vlen = val_offs[i + 1] - val_offs[i]
        delta = i - first
        body = 3 + _varint_size(delta) + _varint_size(klen) + max(klen, 0) + _varint_size(vlen) + vlen
        size = body + _varint_size(body)
        if in_batch + size > batch_bytes and i > first:  # a new batch; its offsets count from 0
            batches += 1
            batch_first[batches] = i
            batch_pos[batches] = pos
            first = i
            in_batch = BATCH_HEADER_BYTES
            delta = 0
            body = 3 + 1 + _varint_size(klen) + max(klen, 0) + _varint_size(vlen) + vlen
            size = body + _varint_size(body)
        in_batch += size
        pos = _put_varint(out, pos, body)
        out[pos] = 0  # attributes
        out[pos + 1] = 0  # timestamp delta: every record of a call has the batch's timestamp
        pos = _put_varint(out, pos + 2, delta)
        pos = _put_varint(out, pos, klen)
        k0 = key_offs[i]
        for j in range(max(klen, 0)):
            out[pos + j] = key_data[k0 + j]
        pos += max(klen, 0)
        pos = _put_varint(out, pos, vlen)
        v0 = val_offs[i]
        for j in range(vlen):
            out[pos + j] = val_data[v0 + j]
        pos += vlen
        out[pos] = 0  # no headers
        pos += 1
    batches += 1
    batch_first[batches] = n
    batch_pos[batches] = pos
    return pos, batches


def binary_layout(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets int64 [n+1], data uint8, null mask bool [n]) of a string or binary array, without copying the
    data (a large_* array or a slice is read in place)."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    n = len(arr)
    _, offsets, data = arr.buffers()
    dtype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offs = np.frombuffer(offsets, dtype=dtype)[arr.offset : arr.offset + n + 1].astype(np.int64)
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(n, np.bool_)
    return offs, raw, nulls


def encode_records(
    keys: pa.Array, values: pa.Array, batch_bytes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The v2 records of ``(keys[i], values[i])`` (binary or string arrays; a null key is a null key), cut
    into batches of at most ``batch_bytes`` (header included; a record bigger than that is a batch alone).

    Returns ``(records, batch_start, batch_first)``: the records' bytes, where each batch's records start in
    them (one more entry: the end) and each batch's first pair (one more entry: n). Values are never null.
    """
    if values.null_count:
        raise ValueError("a record value is null")
    k_offs, k_data, k_null = binary_layout(keys)
    v_offs, v_data, _ = binary_layout(values)
    n = len(values)
    cap = int(k_offs[-1] - k_offs[0] + v_offs[-1] - v_offs[0]) + n * RECORD_OVERHEAD_BYTES + 8
    out = np.empty(cap, dtype=np.uint8)
    batch_first = np.empty(n + 2, dtype=np.int64)
    batch_pos = np.empty(n + 2, dtype=np.int64)
    written, batches = _encode(
        k_offs, k_data, k_null, v_offs, v_data, int(batch_bytes), out, batch_first, batch_pos
    )
    return out[:written], batch_pos[: batches + 1], batch_first[: batches + 1]


@_kernel
def _get_varint(buf, pos, end):
    z = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            return 0, -1
        b = np.int64(buf[pos])
        pos += 1
        z |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    return (z >> 1) ^ -(z & 1), pos


@_kernel
def _parse(buf, start, end, count, fields):
    """Fill ``fields[i]`` = (timestamp delta, offset delta, key start, key length, value start, value length,
    headers start (its count), header count, record end) for ``count`` records in ``buf[start:end]``;
    returns the position after the last one, or -1 - i when record ``i`` is malformed."""
    pos = start
    for i in range(count):
        length, pos = _get_varint(buf, pos, end)
        if pos < 0 or length < 0 or pos + length > end:
            return -1 - i
        rec_end = pos + length
        pos += 1  # attributes
        ts, pos = _get_varint(buf, pos, rec_end)
        if pos < 0:
            return -1 - i
        off, pos = _get_varint(buf, pos, rec_end)
        if pos < 0:
            return -1 - i
        klen, pos = _get_varint(buf, pos, rec_end)
        if pos < 0 or klen < -1 or pos + max(klen, 0) > rec_end:
            return -1 - i
        kpos = pos
        pos += max(klen, 0)
        vlen, pos = _get_varint(buf, pos, rec_end)
        if pos < 0 or vlen < -1 or pos + max(vlen, 0) > rec_end:
            return -1 - i
        vpos = pos
        pos += max(vlen, 0)
        hpos = pos
        hcount, pos = _get_varint(buf, pos, rec_end)
        if pos < 0 or hcount < 0:
            return -1 - i
        fields[i, 0] = ts
        fields[i, 1] = off
        fields[i, 2] = kpos
        fields[i, 3] = klen
        fields[i, 4] = vpos
        fields[i, 5] = vlen
        fields[i, 6] = hpos
        fields[i, 7] = hcount
        fields[i, 8] = rec_end
        pos = rec_end
    return pos


def parse_records(buf: np.ndarray, start: int, end: int, count: int) -> np.ndarray | None:
    """``count`` records of ``buf[start:end]`` (uint8) as an int64 array [count, 9]: timestamp delta, offset
    delta, key start, key length (-1: null), value start, value length (-1: null), headers start, header
    count, record end. None when the records are malformed or do not end exactly at ``end`` (the caller then
    falls back to kafka-python's own reader, which raises its usual error)."""
    fields = np.empty((count, 9), dtype=np.int64)
    pos = _parse(buf, start, end, count, fields)
    if pos != end:
        return None
    return fields
