"""KeyTable: the open-addressing hash table from a key's fingerprint to its slot in the state slab.

Linear probing over int32 slot numbers (4 bytes a position), at most half full and rebuilt to at most a
quarter full when it would pass that; the key's fingerprint is checked in the slot's own fingerprint row
(``fp[slot]``, two uint64), so a lookup reads one table entry and one 16-byte row. Removal shifts the entries
after the gap back (no tombstones, so long-running churn never degrades probes). The loops are compiled
(:mod:`key_kernels`); this class owns the table array and its sizing.
"""

from __future__ import annotations

import numpy as np

from rnnstream.rnn_core.key_kernels import EMPTY, place_slots, probe_hashes
from rnnstream.rnn_core.slab_memory import filled

MAX_LOAD = 0.5
MAX_SLOTS = 2**31 - 1  # slot numbers are int32 in the table


class KeyTable:
    """Fingerprint -> slot; the probing itself runs in :mod:`key_kernels` over :attr:`tab`."""

    def __init__(self, min_size: int) -> None:
        self.tab = filled(16, np.int32, EMPTY)
        self.shift = np.uint64(60)
        self.size = 16
        self.count = 0  # entries held
        self.rebuild(min_size, np.empty((0, 2), np.uint64), np.empty(0, np.int64))

    @property
    def nbytes(self) -> int:
        return int(self.tab.nbytes)

    def fits(self, n: int) -> bool:
        """True when ``n`` more entries keep the load under its limit."""
        return self.count + n <= MAX_LOAD * self.size

    def rebuild(self, min_size: int, fp: np.ndarray, live: np.ndarray) -> None:
        """A fresh table of at least ``min_size`` positions holding exactly the slots ``live`` (their
        fingerprints are ``fp[live]``)."""
        size = 16
        while size < max(min_size, 2 * live.size):
            size *= 2
        self.tab = filled(size, np.int32, EMPTY)
        self.size = size
        self.shift = np.uint64(64 - (size.bit_length() - 1))
        self.count = int(live.size)
        if live.size:
            place_slots(np.ascontiguousarray(live, np.int64), self.tab, self.shift, fp)

    def probe(self, hashes: np.ndarray, fp: np.ndarray) -> np.ndarray:
        """The slot of each fingerprint ``hashes[i] = (h1, h2)``, -1 where absent."""
        slots = np.empty(hashes.shape[0], np.int64)
        probe_hashes(np.ascontiguousarray(hashes, np.uint64), self.tab, self.shift, fp, slots)
        return slots
