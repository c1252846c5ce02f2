"""Stream keys as Arrow strings, and their 128-bit fingerprints, for a whole batch at once.

Each key (its UTF-8 bytes, read straight from an Arrow string array's buffers) gets two 64-bit hash chains
over its 8-byte words with different mixers (splitmix64's and murmur3's finalizers) and secret per-store
seeds, in one compiled loop over the batch (:mod:`key_kernels`). Two distinct keys are taken for one only if
all 128 bits collide (~2^-128 a pair; the seeds are secret, so keys cannot be crafted to collide).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.key_kernels import fingerprint_batch

KeyBatch = Union[Sequence[str], np.ndarray, pa.Array, pa.ChunkedArray]  # noqa: UP007

_NO_BYTES = np.zeros(0, np.uint8)


def as_string_array(keys: KeyBatch) -> pa.Array:
    """The batch's keys as an Arrow string array without nulls (cheap for lists and Arrow input)."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if not isinstance(keys, pa.Array):
        if len(keys) == 0:
            return pa.array([], type=pa.string())
        # pa.array(list) without a type is ~40x faster than with type=pa.string() (pyarrow 25); check after.
        keys = pa.array(keys if isinstance(keys, (list, np.ndarray)) else list(keys))
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        if len(keys) == 0:
            return pa.array([], type=pa.string())
        raise TypeError(f"stream keys must be strings, got Arrow type {keys.type}")
    if keys.null_count:
        raise ValueError(f"stream keys must not be null ({keys.null_count} nulls in the batch)")
    return keys


def key_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, offsets ``[n + 1]``) of a string array from :func:`as_string_array`, without copies:
    key ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (offsets int32, or int64 for large strings)."""
    n = len(arr)
    offset_type = np.dtype(np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], offset_type, n + 1, arr.offset * offset_type.itemsize)
    data = _NO_BYTES if bufs[2] is None or bufs[2].size == 0 else np.frombuffer(bufs[2], np.uint8)
    return data, offsets


def fingerprints(arr: pa.Array, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of each key's UTF-8 bytes (``seeds``: ``uint64 [2, 1]``, one secret seed per chain).

    Each hash runs a chain ``h = mix(h ^ word)`` over the key's 8-byte words (little-endian, the last one
    zero-padded to the key's length), starting from a secret seed and the key's length; the two chains use
    different seeds and mixers.
    """
    data, offsets = key_buffers(arr)
    out = np.empty((len(arr), 2), np.uint64)
    fingerprint_batch(data, offsets, np.uint64(seeds[0, 0]), np.uint64(seeds[1, 0]), out)
    return out[:, 0].copy(), out[:, 1].copy()
