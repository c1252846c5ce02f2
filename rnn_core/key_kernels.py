"""The state store's compiled loops (numba): key fingerprints, the slot index, and state-row copies.

A streaming batch of a few thousand events touches a few thousand random slots of a slab of millions. In
numpy every step of that (hash, probe, allocate, gather, scatter) is a separate pass over the batch with its
own temporaries; here each is one loop over the batch, so a key costs one fingerprint, one table read and one
fingerprint check, and a state row one copy. The loops hold no Python objects and keep no state: the caller
(:class:`~rnnstream.rnn_core.state_store.KeyedStateStore`) owns every array and checks sizes before a call.

Compiled once per machine: numba's cache keeps the machine code beside this file (or, where that folder is
read-only, in the per-user cache under ``$XDG_CACHE_HOME``; ``NUMBA_CACHE_DIR`` moves it), so a new process
loads it (~0.3-0.5 s CPU once, numba's own start) instead of compiling (~2 s). Where no folder is writable at
all, the kernels compile in each process instead of failing the import. All kernels live in this one file
because numba's cache is keyed on the file of the function called: a kernel calling into another file would
not see that file change.

Index layout: ``tab`` (int32, a power of two long) holds slot numbers, ``EMPTY`` where free; a key's home
position is the top bits of the first fingerprint half, collisions probe linearly, and removal shifts the
following entries back (no tombstones). ``fp[slot]`` holds the slot key's two fingerprint halves (then its
last event time and its mark: see :func:`probe_keys`), so a probe reads one table entry and one 32-byte
row per key.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from rnnstream.rnn_core.compiled_loop import compiled

EMPTY = -1  # table position holding no slot
FREE = -1  # key length of a slot holding no key

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MIX3 = np.uint64(0xFF51AFD7ED558CCD)
_MIX4 = np.uint64(0xC4CEB9FE1A85EC53)
_ODD1 = np.uint64(0x9E3779B97F4A7C15)
_ODD2 = np.uint64(0xD6E8FEB86659FD93)
_S27, _S30, _S31, _S33 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(33)
_ZERO, _EIGHT, _BYTE = np.uint64(0), np.uint64(8), np.uint64(0xFF)


_LITTLE_ENDIAN = sys.byteorder == "little"  # a word loaded as it lies in memory is the little-endian word


@intrinsic
def _load_word(typingctx, data, p):
    """The 8 bytes ``data[p:p + 8]`` of a uint8 array as one uint64, as they lie in memory (one unaligned
    load; the caller keeps ``p + 8`` inside the array)."""

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        where = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [where], wraparound=False)
        word = builder.bitcast(ptr, ir.IntType(64).as_pointer())
        return builder.load(word, align=1)

    return types.uint64(data, p), codegen


@compiled(inline="always")
def _fingerprint(data, start, end, seed1, seed2):
    """Two 64-bit hashes of ``data[start:end]``: chains ``h = mix(h ^ word)`` over its little-endian 8-byte
    words (the last one zero-padded), from a seed and the length; splitmix64's and murmur3's finalizers.
    Whole words are read with one load each on little-endian machines, byte by byte otherwise."""
    length = np.uint64(end - start)
    a = (length * _ODD1) ^ seed1
    b = (length * _ODD2) ^ seed2
    p = start
    while p < end:
        k = min(8, end - p)
        if _LITTLE_ENDIAN and k == 8:
            w = _load_word(data, p)
        else:
            w = _ZERO
            for j in range(k):
                w |= (np.uint64(data[p + j]) & _BYTE) << (_EIGHT * np.uint64(j))
        p += 8
        a ^= w
        a ^= a >> _S30
        a *= _MIX1
        a ^= a >> _S27
        a *= _MIX2
        a ^= a >> _S31
        b ^= w
        b ^= b >> _S33
        b *= _MIX3
        b ^= b >> _S33
        b *= _MIX4
        b ^= b >> _S33
    return a, b


@compiled()
def fingerprint_batch(data, offsets, seed1, seed2, out):
    """``out[i] = (h1, h2)`` of key ``i`` (bytes ``data[offsets[i]:offsets[i + 1]]``)."""
    for i in range(offsets.size - 1):
        out[i, 0], out[i, 1] = _fingerprint(data, offsets[i], offsets[i + 1], seed1, seed2)


@compiled(inline="always")
def _find(tab, shift, fp, h1, h2):
    """(slot or EMPTY, the position where it is or where it would go)."""
    mask = tab.size - 1
    pos = np.int64(h1 >> shift)
    while True:
        s = tab[pos]
        if s == EMPTY or (fp[s, 0] == h1 and fp[s, 1] == h2):
            return s, pos
        pos = (pos + 1) & mask


@compiled()
def probe_hashes(hashes, tab, shift, fp, slots):
    """``slots[i]``: the slot of fingerprint ``hashes[i]``, or -1; returns how many were not found.

    In stages over the whole batch, so the random reads of different keys overlap instead of waiting on
    each other (a key's table read, then its fingerprint row, are two cache misses at a million keys): all
    home entries first, then the fingerprint checks; only keys not at their home position probe on.
    """
    n = hashes.shape[0]
    for i in range(n):
        slots[i] = tab[np.int64(hashes[i, 0] >> shift)]
    missing = 0
    for i in range(n):
        s = slots[i]
        if s == EMPTY:
            missing += 1
        elif fp[s, 0] != hashes[i, 0] or fp[s, 1] != hashes[i, 1]:
            s, _ = _find(tab, shift, fp, hashes[i, 0], hashes[i, 1])
            slots[i] = s
            missing += s == EMPTY
    return missing


@compiled()
def probe_keys(data, offsets, seed1, seed2, tab, shift, fp, slots, hashes, marks, stamp, prev):
    """Fingerprint and find every key of a batch: ``hashes[i]`` its fingerprint, ``slots[i]`` its slot or
    -1; returns how many were not found.

    Also links each found key's events: ``prev[i]`` is the batch's previous event of the same key (-1 for
    none or a key not found), read from the slot's mark (``marks[slot]``: ``stamp + i`` of the last event
    that looked the slot up, where ``stamp`` is this batch's, above every earlier batch's marks by at
    least ``2**32``). The slot's row was just read for the fingerprint check, so this costs no new miss.
    """
    for i in range(offsets.size - 1):
        hashes[i, 0], hashes[i, 1] = _fingerprint(data, offsets[i], offsets[i + 1], seed1, seed2)
    missing = probe_hashes(hashes, tab, shift, fp, slots)
    for i in range(slots.size):
        s = slots[i]
        prev[i] = -1
        if s >= 0:
            if marks[s] >= stamp:
                prev[i] = marks[s] - stamp
            marks[s] = stamp + i
    return missing


@compiled()
def insert_keys(
    todo, hashes, data, offsets, tab, shift, fp, times, key_start, key_len, arena, arena_used, free, num_free,
    next_fresh, slots, marks, stamp, prev,
):  # fmt: skip
    """Give each event ``todo[i]`` (ascending) whose key has no slot yet one (a repeated new key gets the
    slot its first event got, and ``prev[i]`` links it as in :func:`probe_keys`): the top of the ``free``
    stack first, then fresh slots from ``next_fresh``. Its fingerprint, table entry, mark and key bytes
    (appended to ``arena``) are written, its time set to -1 (its state row is zero already). The caller
    made room for every event of ``todo``. Returns (num_free, next_fresh, arena_used, keys added)."""
    added = 0
    for i in todo:
        h1, h2 = hashes[i, 0], hashes[i, 1]
        s, pos = _find(tab, shift, fp, h1, h2)
        prev[i] = -1 if s == EMPTY else marks[s] - stamp
        if s == EMPTY:
            if num_free > 0:
                num_free -= 1
                s = free[num_free]
            else:
                s = next_fresh
                next_fresh += 1
            tab[pos] = s
            fp[s, 0], fp[s, 1] = h1, h2
            times[s] = -1
            lo, hi = offsets[i], offsets[i + 1]
            key_start[s] = arena_used
            key_len[s] = hi - lo
            for k in range(hi - lo):
                arena[arena_used + k] = data[lo + k]
            arena_used += hi - lo
            added += 1
        marks[s] = stamp + i
        slots[i] = s
    return num_free, next_fresh, arena_used, added


@compiled()
def place_slots(live, tab, shift, fp):
    """Put slots (known absent from the table) into it, each at the first free position from its home."""
    mask = tab.size - 1
    for s in live:
        pos = np.int64(fp[s, 0] >> shift)
        while tab[pos] != EMPTY:
            pos = (pos + 1) & mask
        tab[pos] = s


@compiled()
def release_slots(slots, tab, shift, fp, rows, times, key_len, free, num_free):
    """Forget the keys of distinct live ``slots``: their table entries removed (later entries of the probe
    run shifted back into the gap), rows zeroed, times -1, slots pushed on the ``free`` stack (which has
    room). Returns (num_free, key bytes released)."""
    mask = tab.size - 1
    released = 0
    for s in slots:
        pos = np.int64(fp[s, 0] >> shift)
        while tab[pos] != s:
            pos = (pos + 1) & mask
        gap = pos
        j = pos
        while True:
            j = (j + 1) & mask
            t = tab[j]
            if t == EMPTY:
                break
            home = np.int64(fp[t, 0] >> shift)
            # t stays unless its home lies cyclically outside (gap, j]
            if (home <= gap or home > j) if gap <= j else (home <= gap and home > j):
                tab[gap] = t
                gap = j
        tab[gap] = EMPTY
        for k in range(rows.shape[1]):
            rows[s, k] = 0.0
        times[s] = -1
        released += key_len[s]
        key_len[s] = FREE
        fp[s, 0], fp[s, 1] = 0, 0
        free[num_free] = s
        num_free += 1
    return num_free, released


@compiled()
def gather_rows(rows, slots, out):
    """``out[i] = rows[slots[i]]`` (an IndexError for a slot outside the slab)."""
    n, w = rows.shape
    for i in range(slots.size):
        s = slots[i]
        if s < 0 or s >= n:
            raise IndexError("slot outside the state slab")
        for k in range(w):  # element loops: numba's slice assignment is ~5x slower for rows this short
            out[i, k] = rows[s, k]


@compiled()
def gather_states(rows, times, slots, out, out_times):
    """``out[i] = rows[slots[i]]`` and ``out_times[i] = times[slots[i]]`` (an IndexError for a slot outside
    the slab): a chunk's states and last event times in one pass."""
    n, w = rows.shape
    for i in range(slots.size):
        s = slots[i]
        if s < 0 or s >= n:
            raise IndexError("slot outside the state slab")
        for k in range(w):
            out[i, k] = rows[s, k]
        out_times[i] = times[s]


@compiled()
def scatter_rows(rows, slots, src, times, src_times):
    """``rows[slots[i]] = src[i]``, and ``times[slots[i]] = src_times[i]`` when ``src_times`` is not empty."""
    n, w = rows.shape
    with_times = src_times.size > 0
    for i in range(slots.size):
        s = slots[i]
        if s < 0 or s >= n:
            raise IndexError("slot outside the state slab")
        for k in range(w):
            rows[s, k] = src[i, k]
        if with_times:
            times[s] = src_times[i]


@compiled()
def copy_keys(slots, key_start, key_len, arena, offsets, out):
    """The key bytes of ``slots`` one after another into ``out``, ``offsets`` (n + 1) marking each."""
    at = 0
    offsets[0] = 0
    for i in range(slots.size):
        s = slots[i]
        lo, m = key_start[s], key_len[s]
        for k in range(m):
            out[at + k] = arena[lo + k]
        at += m
        offsets[i + 1] = at
