"""Per-key recurrent state kept in one preallocated tensor slab, with a compiled key index.

Why it looks the way it does: a streaming worker scores micro-batches of a few thousand events for millions
of keys. A Python ``dict`` from key to slot costs ~0.7 µs a lookup at a million keys (dependent cache misses
inside the interpreter loop), as much as the recurrent step itself. So the index is one compiled loop over
the batch (:mod:`key_kernels`): each key gets a 128-bit fingerprint (:mod:`key_hashing`, secret per-store
seeds drawn from the OS; ``hash_seed`` fixes them), a :class:`KeyTable` maps it to a slot, and new keys get
slots (freed ones first) in the same pass. The key strings are kept as bytes (:class:`KeyArena`) for
:meth:`keys`, snapshots and undo, never as one Python object a key.

States live in a float32 slab ``[capacity, S, L, H]`` (S = 2 for LSTM h/c, L layers, H hidden); growth doubles
the slab (amortized O(1) a key, nothing is copied per event); :meth:`reserve` sizes it exactly. Freed slots
are zeroed and reused, so an unknown key's state is always zeros. Last event time per slot (int64 ms, -1 =
none yet) drives TTL eviction. Gathers and scatters of state rows are compiled loops too. Snapshots of a
chosen set of keys are Arrow IPC files (:mod:`state_snapshot`). The slab and the per-slot and table arrays,
from 4 MiB on, live in huge-page mappings (:mod:`slab_memory`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from rnnstream.rnn_core.key_arena import KeyArena
from rnnstream.rnn_core.key_hashing import KeyBatch, as_string_array, key_buffers
from rnnstream.rnn_core.key_kernels import (
    FREE,
    gather_rows,
    gather_states,
    insert_keys,
    probe_keys,
    release_slots,
    scatter_rows,
)
from rnnstream.rnn_core.key_table import MAX_SLOTS, KeyTable
from rnnstream.rnn_core.slab_memory import zeros
from rnnstream.rnn_core.state_snapshot import (
    read_snapshot,
    read_snapshot_table,
    snapshot_table,
    write_snapshot,
)

__all__ = ["KeyBatch", "KeyedStateStore", "as_string_array"]

_NO_TIMES = np.zeros(0, np.int64)


class KeyedStateStore:
    """Recurrent state per stream key: a preallocated float32 slab plus a compiled key index.

    ``state_shape`` is the per-key state ``(S, L, H)`` (``ModelConfig.state_shape``). All batch methods accept
    keys as a list of ``str``, a numpy array of ``str``, or an Arrow string array (the fastest: no Python
    objects are touched at all).

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
        self._seed1, self._seed2 = np.uint64(self._seeds[0, 0]), np.uint64(self._seeds[1, 0])
        # per slot: state row, key bytes (in the arena), and one 32-byte row [h1, h2, last time, mark]: the
        # fingerprint check of a lookup brings the slot's time into the cache for the step that follows, and
        # the mark (the last lookup's stamp + event) links a batch's events of a key (key_kernels.probe_keys)
        self._capacity = 0
        self._rows = np.zeros((0, int(np.prod(self._state_shape))), np.float32)
        self._fp = np.zeros((0, 4), np.uint64)
        self._times, self._marks = self._fp.view(np.int64)[:, 2], self._fp.view(np.int64)[:, 3]
        self._batch = 0  # lookups so far (a lookup's stamp is this << 32; marks restart before it overflows)
        self._keys = KeyArena()
        self._next_fresh = 0  # slots >= this were never used
        self._free = np.empty(64, np.int64)  # stack of freed (zeroed) slots
        self._num_free = 0
        self._num_keys = 0
        self._hashes = np.empty((0, 2), np.uint64)  # scratch: the batch's fingerprints
        self._table = KeyTable(16)
        self.watermark_ms = -1  # newest event time applied (the scorer's event-time clock; -1 = none yet)
        self._grow_slots(capacity)
        self._table.rebuild(2 * capacity, self._fp, np.empty(0, np.int64))

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
        """Bytes held: slab, per-slot arrays, hash table, free list, key bytes and their offsets."""
        arrays = (self._rows, self._fp, self._free, self._hashes)
        return int(sum(a.nbytes for a in arrays) + self._table.nbytes + self._keys.nbytes)

    @property
    def raw_bytes_per_key(self) -> int:
        """The state itself: ``S * L * H * 4`` bytes."""
        s, n, h = self._state_shape
        return s * n * h * 4

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._keys.length[: self._next_fresh] != FREE)

    def keys(self) -> list[str]:
        """All keys holding a slot, in slot order."""
        return self._keys.strings(self._live_slots()).to_pylist()

    # ------------------------------------------------------------------ key index
    def lookup(self, keys: KeyBatch, create: bool = True) -> np.ndarray:
        """Slot of each key (int64 [N]); unknown keys get a fresh zeroed slot, or -1 when ``create=False``.

        Repeated keys in the batch get the same slot; new keys get slots in the order they first appear.
        """
        return self.lookup_linked(keys, create)[0]

    def lookup_linked(self, keys: KeyBatch, create: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lookup`, and for each event the batch's previous event of the same key (int64 [N], -1 for
        its first, and for keys without a slot): found in the same pass, from each slot's mark."""
        arr = as_string_array(keys)
        n = len(arr)
        if n == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if n >= 2**32:
            raise ValueError(f"a lookup takes fewer than 2**32 keys, got {n}")
        data, offsets = key_buffers(arr)
        if self._hashes.shape[0] < n:
            self._hashes = np.empty((max(n, 2 * self._hashes.shape[0]), 2), np.uint64)
        hashes = self._hashes[:n]
        slots, prev = np.empty(n, np.int64), np.empty(n, np.int64)
        self._batch += 1
        if self._batch >= 2**31:  # stamps stay int64: forget every mark and count again
            self._marks[:] = 0
            self._batch = 1
        stamp = self._batch << 32
        table = self._table
        missing = probe_keys(
            data, offsets, self._seed1, self._seed2, table.tab, table.shift, self._fp, slots, hashes,
            self._marks, stamp, prev,
        )  # fmt: skip
        if create and missing:
            self._insert(np.flatnonzero(slots < 0), hashes, data, offsets, slots, stamp, prev)
        return slots, prev

    def _insert(
        self, todo: np.ndarray, hashes: np.ndarray, data: np.ndarray, offsets: np.ndarray, slots: np.ndarray,
        stamp: int, prev: np.ndarray,
    ) -> None:  # fmt: skip
        """Give the keys of events ``todo`` (not in the index) slots, one per distinct key."""
        m = todo.size  # at most this many new keys (fewer when one repeats)
        fresh_needed = self._next_fresh + max(0, m - self._num_free)
        if fresh_needed > self._capacity:
            self._grow_slots(self._doubled_capacity(fresh_needed))
        if not self._table.fits(m):
            self._table.rebuild(3 * (self._num_keys + m), self._fp, self._live_slots())
        self._keys.make_room(int((offsets[todo + 1] - offsets[todo]).sum(dtype=np.int64)))
        table, arena = self._table, self._keys
        self._num_free, self._next_fresh, arena.used, added = insert_keys(
            todo, hashes, data, offsets, table.tab, table.shift, self._fp, self._times, arena.start,
            arena.length, arena.buf, arena.used, self._free, self._num_free, self._next_fresh, slots,
            self._marks, stamp, prev,
        )  # fmt: skip
        self._num_keys += added
        table.count += added

    def _doubled_capacity(self, need: int) -> int:
        """The capacity that doubling reaches for ``need`` slots (the growth rule, kept in one place)."""
        cap = self._capacity
        while cap < need:
            cap *= 2
        return cap

    def _grow_slots(self, new_cap: int) -> None:
        if new_cap > MAX_SLOTS:
            raise MemoryError(f"a store holds at most {MAX_SLOTS} keys, {new_cap} asked for")
        old = self._capacity
        # the slab as numpy rows [capacity, S*L*H]: the compiled loops copy whole rows in and out
        rows = zeros((new_cap, self._rows.shape[1]), np.float32)
        rows[:old] = self._rows[:old]
        self._rows = rows
        fp = zeros((new_cap, 4), np.uint64)
        fp[:old] = self._fp
        self._fp, self._times, self._marks = fp, fp.view(np.int64)[:, 2], fp.view(np.int64)[:, 3]
        self._times[old:] = -1
        self._keys.grow_slots(new_cap)
        self._capacity = new_cap

    def _release(self, slots: np.ndarray) -> None:
        """Forget the keys of distinct live slots: index entries removed, slots zeroed and freed."""
        if slots.size == 0:
            return
        need = self._num_free + slots.size
        if need > self._free.size:
            grown = np.empty(max(need, 2 * self._free.size), np.int64)
            grown[: self._num_free] = self._free[: self._num_free]
            self._free = grown
        table = self._table
        self._num_free, key_bytes = release_slots(
            np.ascontiguousarray(slots, np.int64), table.tab, table.shift, self._fp, self._rows,
            self._times, self._keys.length, self._free, self._num_free,
        )  # fmt: skip
        self._num_keys -= slots.size
        table.count -= slots.size
        if self._keys.released(int(key_bytes)):
            self._keys.compact(self._live_slots())

    # ------------------------------------------------------------------ states
    def gather_slots(self, slots: np.ndarray, out: np.ndarray | None = None) -> torch.Tensor:
        """States of the given slots, a new float32 tensor ``[B, S, L, H]``; with ``out`` (a C-contiguous
        float32 array ``[B, S, L, H]`` to reuse), written there and returned as a tensor sharing it."""
        slots = np.asarray(slots, np.int64)
        if out is None:
            out = np.empty((slots.size, *self._state_shape), np.float32)
        gather_rows(self._rows, slots, out.reshape(slots.size, -1))
        return torch.from_numpy(out)

    def gather_states(self, slots: np.ndarray, out: np.ndarray, out_times: np.ndarray) -> None:
        """States and last event times of ``slots`` (int64) in one pass, into ``out`` (C-contiguous float32,
        ``B`` rows of ``S * L * H``) and ``out_times`` (int64 [B])."""
        gather_states(self._rows, self._times, slots, out.reshape(slots.size, -1), out_times)

    def slab(self) -> tuple[np.ndarray, np.ndarray]:
        """(state rows float32 ``[capacity, S*L*H]``, last event times int64 ``[capacity]``): the arrays
        themselves, for a scorer's compiled chunk loops (:mod:`.slab_step`); valid until the next lookup,
        which may grow them."""
        return self._rows, self._times

    def scatter_slots(
        self, slots: np.ndarray, states: torch.Tensor, times_ms: np.ndarray | None = None
    ) -> None:
        """Write states (and last event times) of distinct slots; repeated slots give an undefined result."""
        if states.requires_grad:
            states = states.detach()
        if states.dtype != torch.float32 or states.device.type != "cpu":
            states = states.to("cpu", torch.float32)
        slots = np.asarray(slots, np.int64)
        times = _NO_TIMES if times_ms is None else np.asarray(times_ms, np.int64)
        if times.size not in (0, slots.size):
            raise ValueError(f"{times.size} times for {slots.size} slots")
        scatter_rows(self._rows, slots, states.numpy().reshape(slots.size, -1), self._times, times)

    def slot_keys(self, slots: np.ndarray) -> np.ndarray:
        """The key (str) held by each slot, an object array."""
        return self._keys.strings(slots).to_numpy(zero_copy_only=False)

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
        self.scatter_slots(slots, states, times_ms)

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
        slots = self.lookup(keys, create=False)
        slots = np.unique(slots[slots >= 0])
        self._release(slots)
        return int(slots.size)

    def evict_idle(self, now_ms: int, ttl_ms: int) -> int:
        """Forget keys whose last event is older than ``now_ms - ttl_ms`` (event time); returns how many."""
        n = self._next_fresh
        live = self._keys.length[:n] != FREE
        idle = np.flatnonzero(live & (self._times[:n] < int(now_ms) - int(ttl_ms)))
        self._release(idle)
        return int(idle.size)

    def clear(self) -> None:
        """Forget every key (keeps the allocated capacity)."""
        self._release(self._live_slots())

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
            slots = self._live_slots()
        else:
            slots = self.lookup(keys, create=False)
            slots = np.unique(slots[slots >= 0])
        return snapshot_table(
            self._keys.strings(slots),
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
        n = len(keys)
        if n:
            self.reserve(self._doubled_capacity(self._num_keys + n))  # allocated once, not step by step
            slots = self.lookup(keys, create=True)
            first = int(slots[0])
            if int(slots[-1]) - first == n - 1 and bool((np.diff(slots) == 1).all()):
                self._rows[first : first + n] = rows  # fresh slots in order (an empty store): one block copy
                self._times[first : first + n] = times
            else:
                self._rows[slots] = rows
                self._times[slots] = times
        return meta

    def reserve(self, n: int) -> None:
        """Make room for ``n`` keys in all: the slab grows to exactly ``n`` slots and the table once, instead
        of doubling step by step."""
        if n > self._capacity:
            self._grow_slots(n)
        if not self._table.fits(n - self._num_keys):
            self._table.rebuild(3 * n, self._fp, self._live_slots())
