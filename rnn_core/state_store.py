"""Per-key recurrent state kept in one preallocated tensor slab, with a vectorized key index.

Why it looks the way it does: a streaming worker scores micro-batches of a few thousand events for millions
of keys. A Python ``dict`` from key to slot costs ~0.7 µs a lookup at a million keys (dependent cache misses
inside the interpreter loop), as much as the recurrent step itself. So the index is a numpy open-addressing
hash table probed for the whole batch at once:

- each key (its UTF-8 bytes, read straight from an Arrow string array) gets a 128-bit fingerprint: two
  64-bit hash chains over its 8-byte words with different mixers and secret per-store seeds (drawn from the
  OS; ``hash_seed`` fixes them), computed with a few numpy passes per batch (both chains as the two rows of
  one array);
- the table (linear probing, load <= 3/8; one 16-byte row a position holding the first 64 bits and the slot)
  maps the first 64 bits to a slot; the slot's stored second 64 bits must match too. Two distinct keys are
  taken for one only if all 128 bits collide (~2^-128 a pair for a well-mixed hash; the seeds are secret, so
  keys cannot be crafted to collide). The key strings themselves
  are kept (one Python ``str`` a key) for :meth:`keys`, snapshots and eviction, not for lookups.

States live in a float32 slab ``[capacity, S, L, H]`` (S = 2 for LSTM h/c, L layers, H hidden); growth doubles
the slab (amortized O(1) a key, nothing is copied per event). Freed slots are zeroed and reused, so an unknown
key's state is always zeros. Last event time per slot (int64 ms, -1 = none yet) drives TTL eviction.
Snapshots of a chosen set of keys are Arrow IPC files written atomically to any ``pyarrow.fs`` filesystem.

The slab and the per-slot and table arrays, from 4 MiB on, live in anonymous mappings advised for
transparent huge pages (see :func:`_zeros`): every lookup, gather and scatter touches random rows, and with
4 KiB pages most of those would also miss the TLB.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import secrets
import sys
from collections.abc import Sequence
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from rnnstream.rnn_core.storage import resolve_filesystem, write_atomic

KeyBatch = Union[Sequence[str], np.ndarray, pa.Array, pa.ChunkedArray]  # noqa: UP007

_EMPTY = -1  # table position never used
_TOMB = -2  # table position whose key was removed (probing continues past it)
_MAX_LOAD = 0.375  # table load limit; rebuilt to load <= 1/4 (short probe chains)
_WINDOW = 4
_TAB_COLS = 2  # table row: h1, slot (int64 bits; _EMPTY / _TOMB when free): one read finds both
_COL_H1, _COL_SLOT = 0, 1
_STATE_SHAPE_META = b"rnnstream.state_shape"
_FORMAT_META = b"rnnstream.snapshot_format"
_WATERMARK_META = b"rnnstream.watermark_ms"
_FORMAT = b"keyed-state-v1"
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MIX3 = np.uint64(0xFF51AFD7ED558CCD)
_MIX4 = np.uint64(0xC4CEB9FE1A85EC53)
_ODD1 = np.uint64(0x9E3779B97F4A7C15)
_ODD2 = np.uint64(0xD6E8FEB86659FD93)
_ODDS = np.array([[_ODD1], [_ODD2]], np.uint64)
_BYTE_MASKS = np.array([0, *((1 << (8 * k)) - 1 for k in range(1, 8)), (1 << 64) - 1], dtype=np.uint64)


_HUGE_PAGE = 1 << 21  # x86-64/arm64 transparent huge page
_HUGE_MIN_BYTES = 4 << 20  # arrays from this size on ask for huge pages


def _zeros(shape: int | tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """A zeroed array; from 4 MiB on, in its own 2 MiB-aligned anonymous mapping marked ``MADV_HUGEPAGE``.

    The slab and the index are read at random rows: with 4 KiB pages nearly every row costs a TLB miss and
    a page walk (the slab alone spans 64k pages at a million keys). Transparent huge pages (Linux, in the
    usual ``madvise`` mode) cut that to a few hundred pages: gathers and probes get ~1.5x faster. Elsewhere
    (no ``MADV_HUGEPAGE``) the mapping is plain memory. The memory is freed with the array.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    nbytes = count * dtype.itemsize
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < _HUGE_MIN_BYTES or advise is None:
        return np.zeros(shape, dtype)
    region = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(region, np.uint8)  # keeps the mapping alive (anonymous mappings start zeroed)
    start = -raw.ctypes.data % _HUGE_PAGE
    with contextlib.suppress(OSError):  # a kernel without THP: plain pages
        region.madvise(advise, start, nbytes)
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _filled(n: int, dtype: type | np.dtype, fill: object) -> np.ndarray:
    a = _zeros(n, dtype)
    if fill != 0:
        a[:] = fill
    return a


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


class KeyedStateStore:
    """Recurrent state per stream key: a preallocated float32 slab plus a vectorized key index.

    ``state_shape`` is the per-key state ``(S, L, H)`` (``ModelConfig.state_shape``). All batch methods accept
    keys as a list of ``str``, a numpy array of ``str``, or an Arrow string array (the fastest: no Python
    objects are touched for keys already present).

    Hot path for a scorer: ``slots = lookup(keys)``, ``gather_slots(slots)``, step, ``scatter_slots(...)``.
    ``gather``/``scatter`` do the same by key. Within one ``scatter`` the keys must be distinct (apply a
    batch's repeated keys in waves; :class:`~rnnstream.rnn_core.stream_scorer.StreamScorer` does this).
    Not thread-safe: one owner (a scoring worker) a store.
    """

    def __init__(
        self, state_shape: Sequence[int], capacity: int = 1024, *, hash_seed: int | None = None
    ) -> None:
        if len(state_shape) != 3 or any(int(n) <= 0 for n in state_shape):
            raise ValueError(f"state_shape must be (S, L, H) of positive ints, got {tuple(state_shape)}")
        self._state_shape = tuple(int(n) for n in state_shape)
        capacity = max(1, int(capacity))
        rng = np.random.default_rng(secrets.randbits(128) if hash_seed is None else hash_seed)
        self._seeds = rng.integers(0, 2**64, 2, dtype=np.uint64).reshape(2, 1)
        # per slot
        self._capacity = 0
        with torch.inference_mode(False):
            self._slab = torch.zeros((0, *self._state_shape), dtype=torch.float32)
        self._times = np.empty(0, np.int64)
        self._h1 = np.empty(0, np.uint64)
        self._h2 = np.empty(0, np.uint64)
        self._live = np.empty(0, np.bool_)
        self._slot_keys = np.empty(0, object)
        self._next_fresh = 0  # slots >= this were never used
        self._free = np.empty(0, np.int64)  # stack of freed (zeroed) slots
        self._num_free = 0
        self._num_keys = 0
        self._key_bytes = 0  # sys.getsizeof of the stored key strings
        # hash table
        # one 16-byte row a table position: (h1, slot), so a probe reads one cache line, not two arrays
        self._tab = np.zeros((0, _TAB_COLS), np.uint64)
        self._tab_i = self._tab.view(np.int64)  # the same memory, for the signed slot column
        self._tab_size = 0
        self._tab_used = 0  # live + tombstones
        self._shift = np.uint64(64)
        self.watermark_ms = -1  # newest event time applied (the scorer's event-time clock; -1 = none yet)
        self._grow_slots(capacity)
        self._rebuild_table(max(16, capacity * 4))

    # ------------------------------------------------------------------ properties
    @property
    def state_shape(self) -> tuple[int, int, int]:
        return self._state_shape  # type: ignore[return-value]

    @property
    def capacity(self) -> int:
        """Slots allocated in the slab (grows by doubling)."""
        return self._capacity

    @property
    def num_keys(self) -> int:
        """Keys currently holding a slot."""
        return self._num_keys

    def __len__(self) -> int:
        return self._num_keys

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.lookup([key], create=False)[0] >= 0)

    @property
    def nbytes(self) -> int:
        """Bytes held: slab, per-slot arrays, hash table, free list, key strings and their pointers."""
        arrays = (self._times, self._h1, self._h2, self._live, self._slot_keys, self._free)
        table = self._tab.nbytes
        slab = self._slab.element_size() * self._slab.nelement()
        return int(slab + sum(a.nbytes for a in arrays) + table + self._key_bytes)

    @property
    def raw_bytes_per_key(self) -> int:
        """The state itself: ``S * L * H * 4`` bytes."""
        s, n, h = self._state_shape
        return s * n * h * 4

    def keys(self) -> list[str]:
        """All keys holding a slot, in slot order."""
        return self._slot_keys[: self._next_fresh][self._live[: self._next_fresh]].tolist()

    # ------------------------------------------------------------------ key index
    def lookup(self, keys: KeyBatch, create: bool = True) -> np.ndarray:
        """Slot of each key (int64 [N]); unknown keys get a fresh zeroed slot, or -1 when ``create=False``.

        Repeated keys in the batch get the same slot.
        """
        arr = as_string_array(keys)
        if len(arr) == 0:
            return np.empty(0, np.int64)
        h1, h2 = self._fingerprints(arr)
        slots, _ = self._probe(h1, h2)
        if create:
            missing = np.flatnonzero(slots < 0)
            if missing.size:
                slots[missing] = self._insert(arr, missing, h1[missing], h2[missing])
        return slots

    def _fingerprints(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Two 64-bit hashes of each key's UTF-8 bytes, computed for the whole batch with numpy.

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
        h ^= self._seeds
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

    def _probe(self, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, table position) of each fingerprint, -1 where absent; all keys probed together.

        One probe for every key resolves most of them (one 16-byte table row holds the first fingerprint
        half and the slot; the slot's second half is checked after); the rest scan windows of ``_WINDOW``
        positions at a time (2-D gathers, so a long probe chain costs one numpy pass instead of one per step).
        """
        mask = np.int64(self._tab_size - 1)
        pos = (h1 >> self._shift).astype(np.int64)
        rows = self._tab.take(pos, axis=0)
        ts = rows.view(np.int64)[:, _COL_SLOT]
        hit = (rows[:, _COL_H1] == h1) & (ts >= 0)
        hit &= self._h2[np.where(hit, ts, 0)] == h2
        slots = np.where(hit, ts, -1)
        tpos = np.where(hit, pos, -1)
        act = np.flatnonzero(~hit & (ts != _EMPTY))
        pos = pos[act] + 1
        offsets = np.arange(_WINDOW, dtype=np.int64)
        while act.size:
            win = (pos[:, None] + offsets) & mask
            wrows = self._tab[win]
            wts = wrows.view(np.int64)[..., _COL_SLOT]
            whit = (wrows[..., _COL_H1] == h1[act, None]) & (wts >= 0)
            stop = whit | (wts == _EMPTY)
            first = stop.argmax(axis=1)
            r = np.arange(act.size)
            stopped = stop[r, first]
            is_hit = stopped & whit[r, first]
            cand = wts[r, first]
            ok = is_hit & (self._h2[np.where(is_hit, cand, 0)] == h2[act])
            slots[act[ok]] = cand[ok]
            tpos[act[ok]] = win[r, first][ok]
            # go on: no stop in the window, or a first-half match whose second half differs
            again = ~stopped | (is_hit & ~ok)
            step = np.where(stopped, first + 1, _WINDOW)
            act, pos = act[again], (pos + step)[again]
        return slots, tpos

    def _insert(self, arr: pa.Array, missing: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """Give the missing events' keys new slots (one per distinct key); returns each event's slot."""
        if missing.size == 1:
            first, inverse = np.zeros(1, np.int64), np.zeros(1, np.int64)
        else:  # one new slot per distinct key (both fingerprints equal)
            pair = np.empty(missing.size, dtype=[("a", np.uint64), ("b", np.uint64)])
            pair["a"], pair["b"] = h1, h2
            _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
        m = first.size
        new_slots = self._allocate(m)
        key_objs = arr.take(pa.array(missing[first])).to_pylist()
        self._slot_keys[new_slots] = key_objs
        self._key_bytes += sum(map(sys.getsizeof, key_objs))
        self._h1[new_slots] = h1[first]
        self._h2[new_slots] = h2[first]
        self._times[new_slots] = -1
        self._live[new_slots] = True
        self._num_keys += m
        if (self._tab_used + m) > _MAX_LOAD * self._tab_size:
            self._rebuild_table(4 * (self._num_keys))
        else:
            self._table_insert(h1[first], new_slots)
        return new_slots[inverse]

    def _allocate(self, m: int) -> np.ndarray:
        take = min(m, self._num_free)
        reused = self._free[self._num_free - take : self._num_free][::-1].copy()
        self._num_free -= take
        fresh_n = m - take
        if self._next_fresh + fresh_n > self._capacity:
            new_cap = self._capacity
            while self._next_fresh + fresh_n > new_cap:
                new_cap *= 2
            self._grow_slots(new_cap)
        fresh = np.arange(self._next_fresh, self._next_fresh + fresh_n, dtype=np.int64)
        self._next_fresh += fresh_n
        return np.concatenate([reused, fresh]) if take else fresh

    def _grow_slots(self, new_cap: int) -> None:
        old = self._capacity
        # the slab's memory as numpy rows [capacity, S*L*H]: row take/assign on a 2-D array are 2-4x
        # faster than torch index_select/index_copy_ (or numpy on the 4-D view) for rows this small
        rows = _zeros((new_cap, int(np.prod(self._state_shape))), np.float32)
        if old:
            rows[:old] = self._rows[:old]
        self._rows = rows
        with torch.inference_mode(False):
            self._slab = torch.from_numpy(rows).view(new_cap, *self._state_shape)

        def grown(a: np.ndarray, fill: object) -> np.ndarray:
            if a.dtype == object:
                out = np.empty(new_cap, a.dtype)
                out[old:] = fill
            else:
                out = _filled(new_cap, a.dtype, fill)
            out[:old] = a
            return out

        self._times = grown(self._times, -1)
        self._h1 = grown(self._h1, 0)
        self._h2 = grown(self._h2, 0)
        self._live = grown(self._live, False)
        self._slot_keys = grown(self._slot_keys, None)
        self._capacity = new_cap

    def _rebuild_table(self, min_size: int) -> None:
        size = 16
        while size < min_size:
            size *= 2
        self._tab = _zeros((size, _TAB_COLS), np.uint64)
        self._tab_i = self._tab.view(np.int64)
        self._tab_i[:, _COL_SLOT] = _EMPTY
        self._tab_size = size
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._tab_used = 0
        live = np.flatnonzero(self._live[: self._next_fresh])
        if live.size:
            self._table_insert(self._h1[live], live)

    def _table_insert(self, h1: np.ndarray, slots: np.ndarray) -> None:
        """Place keys known to be absent at the first free position of their probe sequence."""
        mask = np.int64(self._tab_size - 1)
        pos = (h1 >> self._shift).astype(np.int64)
        todo = np.arange(h1.size)
        slot_col = self._tab_i[:, _COL_SLOT]
        while todo.size:
            p = pos[todo]
            free = slot_col[p] < 0
            cand, cpos = todo[free], p[free]
            placed = np.zeros(todo.size, np.bool_)
            if cand.size:
                upos, first = np.unique(cpos, return_index=True)  # one winner per position
                win = cand[first]
                self._tab_used += int(np.count_nonzero(slot_col[upos] == _EMPTY))
                self._tab[upos, _COL_H1] = h1[win]
                slot_col[upos] = slots[win]
                placed[np.flatnonzero(free)[first]] = True
            todo = todo[~placed]
            pos[todo] = (pos[todo] + 1) & mask

    def _release(self, slots: np.ndarray, tpos: np.ndarray) -> None:
        """Forget keys: tombstone their table entries, zero and free their slots."""
        if slots.size == 0:
            return
        self._tab_i[tpos, _COL_SLOT] = _TOMB
        self._key_bytes -= sum(map(sys.getsizeof, self._slot_keys[slots].tolist()))
        self._slot_keys[slots] = None
        self._live[slots] = False
        self._times[slots] = -1
        self._rows[slots] = 0.0
        need = self._num_free + slots.size
        if need > self._free.size:
            grown = np.empty(max(need, 2 * self._free.size, 64), np.int64)
            grown[: self._num_free] = self._free[: self._num_free]
            self._free = grown
        self._free[self._num_free : need] = slots
        self._num_free = need
        self._num_keys -= slots.size
        if self._num_keys < self._tab_used // 4 and self._tab_size > 64:  # mostly tombstones
            self._rebuild_table(4 * max(self._num_keys, 4))

    # ------------------------------------------------------------------ states
    def gather_slots(self, slots: np.ndarray, out: np.ndarray | None = None) -> torch.Tensor:
        """States of the given slots, a new float32 tensor ``[B, S, L, H]``; with ``out`` (a C-contiguous
        float32 array ``[B, S, L, H]`` to reuse), written there and returned as a tensor sharing it."""
        if out is None:
            return torch.from_numpy(self._rows.take(slots, axis=0)).view(-1, *self._state_shape)
        self._rows.take(slots, axis=0, out=out.reshape(len(slots), -1))
        return torch.from_numpy(out)

    def scatter_slots(
        self, slots: np.ndarray, states: torch.Tensor, times_ms: np.ndarray | None = None
    ) -> None:
        """Write states (and last event times) of distinct slots; repeated slots give an undefined result."""
        if states.requires_grad:
            states = states.detach()
        if states.dtype != torch.float32 or states.device.type != "cpu":
            states = states.to("cpu", torch.float32)
        self._rows[slots] = states.numpy().reshape(len(slots), -1)  # ~2x faster than index_copy_
        if times_ms is not None:
            self._times[slots] = times_ms

    def slot_keys(self, slots: np.ndarray) -> np.ndarray:
        """The key (str) held by each slot, an object array."""
        return self._slot_keys[slots]

    def slot_times(self, slots: np.ndarray) -> np.ndarray:
        """Last event time (int64 ms, -1 = none yet) of each slot."""
        return self._times[slots]

    def gather(self, keys: KeyBatch) -> torch.Tensor:
        """States ``[B, S, L, H]`` of the keys; unknown keys get zeroed slots (and so zero states)."""
        return self.gather_slots(self.lookup(keys, create=True))

    def scatter(self, keys: KeyBatch, states: torch.Tensor, times_ms: np.ndarray | None = None) -> None:
        """Store each key's new state and last event time. Keys must be distinct within one call."""
        slots = self.lookup(keys, create=True)
        if states.shape != (slots.size, *self._state_shape):
            raise ValueError(f"states must be {(slots.size, *self._state_shape)}, got {tuple(states.shape)}")
        if np.unique(slots).size != slots.size:
            raise ValueError("scatter: a key appears twice in one call; apply repeated keys in waves")
        times = None if times_ms is None else np.asarray(times_ms, np.int64)
        self.scatter_slots(slots, states, times)

    def last_times(self, keys: KeyBatch) -> np.ndarray:
        """Last event time (int64 ms) of each key, -1 for keys never seen or without an event yet."""
        slots = self.lookup(keys, create=False)
        out = np.full(slots.size, -1, np.int64)
        known = slots >= 0
        out[known] = self._times[slots[known]]
        return out

    # ------------------------------------------------------------------ forgetting
    def remove(self, keys: KeyBatch) -> int:
        """Forget the keys (unknown ones are ignored); returns how many were removed."""
        arr = as_string_array(keys)
        if len(arr) == 0:
            return 0
        slots, tpos = self._probe(*self._fingerprints(arr))
        found = slots >= 0
        slots, first = np.unique(slots[found], return_index=True)
        self._release(slots, tpos[found][first])
        return int(slots.size)

    def evict_idle(self, now_ms: int, ttl_ms: int) -> int:
        """Forget keys whose last event is older than ``now_ms - ttl_ms`` (event time); returns how many."""
        n = self._next_fresh
        idle = np.flatnonzero(self._live[:n] & (self._times[:n] < int(now_ms) - int(ttl_ms)))
        if idle.size == 0:
            return 0
        slots, tpos = self._probe(self._h1[idle], self._h2[idle])
        self._release(slots, tpos)
        return int(idle.size)

    def clear(self) -> None:
        """Forget every key (keeps the allocated capacity)."""
        self.remove(self.keys())

    # ------------------------------------------------------------------ snapshots
    def snapshot(
        self,
        keys: KeyBatch | None,
        path: str,
        filesystem: pafs.FileSystem | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Write the states of ``keys`` (None = all; unknown keys skipped) as one Arrow IPC file, atomically.

        Columns: ``key`` (string), ``state`` (fixed_size_list<float32>[S*L*H]), ``last_time`` (int64 ms);
        ``metadata`` (str -> str) goes into the schema metadata. On a local filesystem the file is written
        to a temporary name, fsynced and renamed; on object stores the single upload is atomic.
        Returns the number of keys written.
        """
        table = self.snapshot_table(keys, metadata)
        fs, fs_path = resolve_filesystem(path, filesystem)
        write_atomic(fs, fs_path, lambda out: _write_ipc(out, table))
        return table.num_rows

    def snapshot_table(self, keys: KeyBatch | None, metadata: dict[str, str] | None = None) -> pa.Table:
        """The snapshot as an in-memory Arrow table (see :meth:`snapshot`)."""
        if keys is None:
            slots = np.flatnonzero(self._live[: self._next_fresh])
        else:
            slots = self.lookup(keys, create=False)
            slots = np.unique(slots[slots >= 0])
        width = int(np.prod(self._state_shape))
        states = self._rows.take(slots, axis=0).reshape(-1)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta[_STATE_SHAPE_META.decode()] = json.dumps(list(self._state_shape))
        meta[_FORMAT_META.decode()] = _FORMAT.decode()
        meta[_WATERMARK_META.decode()] = str(int(self.watermark_ms))
        return pa.table(
            {
                "key": pa.array(self._slot_keys[slots].tolist(), type=pa.string()),
                "state": pa.FixedSizeListArray.from_arrays(pa.array(states, type=pa.float32()), width),
                "last_time": pa.array(self._times[slots], type=pa.int64()),
            }
        ).replace_schema_metadata(meta)

    def restore(self, path: str, filesystem: pafs.FileSystem | None = None) -> dict[str, str]:
        """Load a snapshot into this store (which may hold other keys; the snapshot's keys are overwritten).

        Returns the snapshot's metadata (the user's entries).
        """
        fs, fs_path = resolve_filesystem(path, filesystem)
        with fs.open_input_file(fs_path) as f:
            table = pa.ipc.open_file(f).read_all()
        return self.restore_table(table)

    def restore_table(self, table: pa.Table) -> dict[str, str]:
        """Load an in-memory snapshot table (see :meth:`restore`)."""
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        shape = meta.pop(_STATE_SHAPE_META.decode(), None)
        meta.pop(_FORMAT_META.decode(), None)
        watermark = int(meta.pop(_WATERMARK_META.decode(), -1))
        if shape is None or tuple(json.loads(shape)) != self._state_shape:
            raise ValueError(
                f"snapshot state shape {shape} does not match this store's {list(self._state_shape)}; "
                "restore it with the model it was written with"
            )
        self.watermark_ms = max(self.watermark_ms, watermark)
        if table.num_rows == 0:
            return meta
        keys = table.column("key")
        slots = self.lookup(keys, create=True)
        states = table.column("state").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self._rows[slots] = states.reshape(len(slots), -1)
        self._times[slots] = table.column("last_time").to_numpy().astype(np.int64)
        return meta

    def reserve(self, n: int) -> None:
        """Make room for ``n`` keys in all (grows the slab and the table once instead of step by step)."""
        if n > self._capacity:
            cap = self._capacity
            while cap < n:
                cap *= 2
            self._grow_slots(cap)
        if n > _MAX_LOAD * self._tab_size:
            self._rebuild_table(4 * n)


def _write_ipc(out: object, table: pa.Table) -> None:
    with pa.ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)
