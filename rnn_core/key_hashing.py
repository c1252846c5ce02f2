"""Stream keys as Arrow strings, and their 128-bit fingerprints, for a whole batch at once.

Each key (its UTF-8 bytes, read straight from an Arrow string array) gets two 64-bit hash chains over its
8-byte words with different mixers (splitmix64's and murmur3's finalizers) and secret per-store seeds,
computed with a few numpy passes per batch (both chains as the two rows of one array). Two distinct keys are
taken for one only if all 128 bits collide (~2^-128 a pair; the seeds are secret, so keys cannot be crafted
to collide).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import pyarrow as pa

KeyBatch = Union[Sequence[str], np.ndarray, pa.Array, pa.ChunkedArray]  # noqa: UP007

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MIX3 = np.uint64(0xFF51AFD7ED558CCD)
_MIX4 = np.uint64(0xC4CEB9FE1A85EC53)
_ODD1 = np.uint64(0x9E3779B97F4A7C15)
_ODD2 = np.uint64(0xD6E8FEB86659FD93)
_ODDS = np.array([[_ODD1], [_ODD2]], np.uint64)
_BYTE_MASKS = np.array([0, *((1 << (8 * k)) - 1 for k in range(1, 8)), (1 << 64) - 1], dtype=np.uint64)

# Row 0 of a [2, N] hash pair runs splitmix64's finalizer, row 1 murmur3's (both bijections): one numpy
# pass per operation for both chains, shifts and multipliers broadcast per row.
_SHIFTS = tuple(np.array([[a], [b]], np.uint64) for a, b in ((30, 33), (27, 33), (31, 33)))
_MULTS = tuple(np.array([[a], [b]], np.uint64) for a, b in ((_MIX1, _MIX3), (_MIX2, _MIX4)))


def _mix_pair(h: np.ndarray, tmp: np.ndarray) -> None:
    """Finalize both rows of ``h[2, N]`` in place (``tmp`` is scratch of the same shape)."""
    for i, shift in enumerate(_SHIFTS):
        np.right_shift(h, shift, out=tmp)
        h ^= tmp
        if i < len(_MULTS):
            h *= _MULTS[i]


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


def fingerprints(arr: pa.Array, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of each key's UTF-8 bytes, computed for the whole batch with numpy (``seeds``:
    ``uint64 [2, 1]``, one secret seed per chain).

    Each hash runs a chain ``h = mix(h ^ word)`` over the key's 8-byte words (read unaligned straight
    from the Arrow data buffer, the last one masked to the key's length), starting from a secret seed
    and the key's length; the two chains use different seeds and mixers and run as the two rows of one
    array. Keys shorter than the batch's longest keep their hash once their words are used up.
    """
    n = len(arr)
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], offset_type, n + 1, arr.offset * np.dtype(offset_type).itemsize)
    lens = np.diff(offsets).astype(np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    h = np.empty((2, n), np.uint64)
    np.multiply(lens.astype(np.uint64), _ODDS, out=h)
    h ^= seeds
    if hi > lo:
        padded = np.zeros(hi - lo + 8, np.uint8)
        padded[: hi - lo] = np.frombuffer(bufs[2], np.uint8, hi - lo, lo)
        words = np.ndarray((hi - lo + 1,), dtype="<u8", buffer=padded, strides=(1,))  # word at any byte
        starts = offsets[:-1].astype(np.int64) - lo
        num_words = (lens + 7) >> 3
        shortest, longest = int(num_words.min()), int(num_words.max())
        tmp = np.empty_like(h)
        for j in range(longest):
            at = starts + 8 * j
            if j >= shortest:  # keys without a j-th word read any valid word (ignored below)
                np.minimum(at, hi - lo, out=at)
            w = words[at]
            rem = lens - 8 * j
            if int(rem.min()) < 8:
                w &= _BYTE_MASKS[np.clip(rem, 0, 8)]
            if j < shortest:
                h ^= w
                _mix_pair(h, tmp)
            else:  # keys without a j-th word keep their hash
                mixed = h ^ w
                _mix_pair(mixed, tmp)
                np.copyto(h, mixed, where=num_words > j)
    return h[0], h[1]
