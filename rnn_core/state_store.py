"""Per-key recurrent state kept in one preallocated tensor slab, with a vectorized key index.

Why it looks the way it does: a streaming worker scores micro-batches of a few thousand events for millions
of keys. A Python ``dict`` from key to slot costs ~0.7 µs a lookup at a million keys (dependent cache misses
inside the interpreter loop), as much as the recurrent step itself. So the index is numpy, probed for the
whole batch at once: each key gets a 128-bit fingerprint (:mod:`key_hashing`, secret per-store seeds drawn
from the OS; ``hash_seed`` fixes them) and a :class:`KeyTable` maps it to a slot. The key strings themselves
are kept (one Python ``str`` a key) for :meth:`keys`, snapshots and eviction, not for lookups.

States live in a float32 slab ``[capacity, S, L, H]`` (S = 2 for LSTM h/c, L layers, H hidden); growth doubles
the slab (amortized O(1) a key, nothing is copied per event). Freed slots are zeroed and reused, so an unknown
key's state is always zeros. Last event time per slot (int64 ms, -1 = none yet) drives TTL eviction.
Snapshots of a chosen set of keys are Arrow IPC files (:mod:`state_snapshot`). The slab and the per-slot
and table arrays, from 4 MiB on, live in huge-page mappings (:mod:`slab_memory`).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from rnnstream.rnn_core.key_hashing import KeyBatch, as_string_array, fingerprints
from rnnstream.rnn_core.key_table import KeyTable
from rnnstream.rnn_core.slab_memory import filled, zeros
from rnnstream.rnn_core.state_snapshot import (
    read_snapshot,
    read_snapshot_table,
    snapshot_table,
    write_snapshot,
)

__all__ = ["KeyBatch", "KeyedStateStore", "as_string_array"]


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
        self._table = KeyTable(16)
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
        table = self._table.nbytes
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
        h1, h2 = fingerprints(arr, self._seeds)
        slots, _ = self._table.probe(h1, h2, self._h2)
        if create:
            missing = np.flatnonzero(slots < 0)
            if missing.size:
                slots[missing] = self._insert(arr, missing, h1[missing], h2[missing])
        return slots

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
        if not self._table.fits(m):
            self._rebuild_table(4 * (self._num_keys))
        else:
            self._table.insert(h1[first], new_slots)
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
        rows = zeros((new_cap, int(np.prod(self._state_shape))), np.float32)
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
                out = filled(new_cap, a.dtype, fill)
            out[:old] = a
            return out

        self._times = grown(self._times, -1)
        self._h1 = grown(self._h1, 0)
        self._h2 = grown(self._h2, 0)
        self._live = grown(self._live, False)
        self._slot_keys = grown(self._slot_keys, None)
        self._capacity = new_cap

    def _rebuild_table(self, min_size: int) -> None:
        live = np.flatnonzero(self._live[: self._next_fresh])
        self._table.rebuild(min_size, self._h1[live], live)

    def _release(self, slots: np.ndarray, tpos: np.ndarray) -> None:
        """Forget keys: tombstone their table entries, zero and free their slots."""
        if slots.size == 0:
            return
        self._table.remove(tpos)
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
        if self._table.mostly_tombstones(self._num_keys):
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
        slots, tpos = self._table.probe(*fingerprints(arr, self._seeds), self._h2)
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
        slots, tpos = self._table.probe(self._h1[idle], self._h2[idle], self._h2)
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
        write_snapshot(table, path, filesystem)
        return table.num_rows

    def snapshot_table(self, keys: KeyBatch | None, metadata: dict[str, str] | None = None) -> pa.Table:
        """The snapshot as an in-memory Arrow table (see :meth:`snapshot`)."""
        if keys is None:
            slots = np.flatnonzero(self._live[: self._next_fresh])
        else:
            slots = self.lookup(keys, create=False)
            slots = np.unique(slots[slots >= 0])
        return snapshot_table(
            self._slot_keys[slots].tolist(),
            self._rows.take(slots, axis=0),
            self._times[slots],
            self.state_shape,
            self.watermark_ms,
            metadata,
        )

    def restore(self, path: str, filesystem: pafs.FileSystem | None = None) -> dict[str, str]:
        """Load a snapshot into this store (which may hold other keys; the snapshot's keys are overwritten).

        Returns the snapshot's metadata (the user's entries).
        """
        return self.restore_table(read_snapshot(path, filesystem))

    def restore_table(self, table: pa.Table) -> dict[str, str]:
        """Load an in-memory snapshot table (see :meth:`restore`)."""
        keys, rows, times, watermark, meta = read_snapshot_table(table, self.state_shape)
        self.watermark_ms = max(self.watermark_ms, watermark)
        if len(keys):
            slots = self.lookup(keys, create=True)
            self._rows[slots] = rows
            self._times[slots] = times
        return meta

    def reserve(self, n: int) -> None:
        """Make room for ``n`` keys in all (grows the slab and the table once instead of step by step)."""
        if n > self._capacity:
            cap = self._capacity
            while cap < n:
                cap *= 2
            self._grow_slots(cap)
        if not self._table.fits(n - self._num_keys):
            self._rebuild_table(4 * n)
