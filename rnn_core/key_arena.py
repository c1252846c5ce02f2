"""KeyArena: the state store's key strings, as UTF-8 bytes in one growing buffer instead of Python objects.

A Python ``str`` per key costs ~60 bytes and an object pointer, and making one per new key is the slowest
part of admitting a key. Here a key costs its bytes plus a start (int64) and a length (int32) per slot;
keys are appended by the compiled insert loop (:func:`key_kernels.insert_keys`) straight from the batch's
Arrow buffer. A forgotten key's bytes become garbage, reclaimed by compacting once garbage outweighs the live
bytes. Keys come back out as Arrow string arrays (for snapshots) or Python strings (for callers that want
them), built only when asked for.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.key_kernels import FREE, copy_keys
from rnnstream.rnn_core.slab_memory import filled, zeros

_MIN_COMPACT = 1 << 20  # garbage below this is never worth a compaction


class KeyArena:
    """Key bytes per slot: ``start[slot]``, ``length[slot]`` (FREE: no key) into ``buf[:used]``."""

    def __init__(self) -> None:
        self.buf = np.zeros(1024, np.uint8)
        self.used = 0
        self.garbage = 0  # bytes of forgotten keys still in buf[:used]
        self.start = np.zeros(0, np.int64)
        self.length = np.zeros(0, np.int32)

    @property
    def nbytes(self) -> int:
        return int(self.buf.nbytes + self.start.nbytes + self.length.nbytes)

    def grow_slots(self, new_cap: int) -> None:
        old = self.start.size
        start, length = zeros(new_cap, np.int64), filled(new_cap, np.int32, FREE)
        start[:old], length[:old] = self.start, self.length
        self.start, self.length = start, length

    def make_room(self, extra: int) -> None:
        """Room for ``extra`` more bytes (the buffer grows by half its size at least)."""
        if self.used + extra <= self.buf.size:
            return
        grown = zeros(max(self.used + extra, self.buf.size + self.buf.size // 2), np.uint8)
        grown[: self.used] = self.buf[: self.used]
        self.buf = grown

    def released(self, nbytes: int) -> bool:
        """``nbytes`` of keys were forgotten; True when their garbage now outweighs the live keys' bytes (time
        to :meth:`compact`)."""
        self.garbage += nbytes
        return self.garbage >= max(_MIN_COMPACT, self.used - self.garbage)

    def compact(self, live: np.ndarray) -> None:
        """Copy the keys of the ``live`` slots (all that hold one) into a fresh buffer without garbage."""
        offsets = np.empty(live.size + 1, np.int64)
        size = self.used - self.garbage
        buf = zeros(max(1024, size + size // 2), np.uint8)
        copy_keys(live, self.start, self.length, self.buf, offsets, buf)
        self.start[live] = offsets[:-1]
        self.buf, self.used, self.garbage = buf, size, 0

    def strings(self, slots: np.ndarray) -> pa.Array:
        """The keys of ``slots`` (each holding a key) as an Arrow string array."""
        slots = np.ascontiguousarray(slots, np.int64)
        total = int(self.length[slots].sum(dtype=np.int64))
        wide = total >= 2**31
        offsets = np.empty(slots.size + 1, np.int64)
        out = np.empty(max(total, 1), np.uint8)
        copy_keys(slots, self.start, self.length, self.buf, offsets, out)
        kind, offsets = (pa.large_string(), offsets) if wide else (pa.string(), offsets.astype(np.int32))
        return pa.Array.from_buffers(kind, slots.size, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
