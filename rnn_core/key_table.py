"""KeyTable: the open-addressing hash table from a key's fingerprint to its slot in the state slab.

Linear probing, load <= 3/8 (rebuilt to load <= 1/4: short probe chains); one 16-byte row a position holds the
first 64 fingerprint bits and the slot, so one read finds both; the slot's stored second 64 bits must match
too. Every operation takes the whole batch at once (numpy), which is what makes a million-key lookup cheap.
"""

from __future__ import annotations

import numpy as np

from rnnstream.rnn_core.slab_memory import zeros

EMPTY = -1  # table position never used
TOMB = -2  # table position whose key was removed (probing continues past it)
MAX_LOAD = 0.375
_WINDOW = 4
_TAB_COLS = 2  # table row: h1, slot (int64 bits; EMPTY / TOMB when free)
_COL_H1, _COL_SLOT = 0, 1


class KeyTable:
    """Fingerprint -> slot, for whole batches of keys."""

    def __init__(self, min_size: int) -> None:
        self.rebuild(min_size, np.empty(0, np.uint64), np.empty(0, np.int64))

    @property
    def nbytes(self) -> int:
        return int(self._tab.nbytes)

    def fits(self, n: int) -> bool:
        """True when ``n`` more entries keep the load under its limit."""
        return self.used + n <= MAX_LOAD * self.size

    def mostly_tombstones(self, live: int) -> bool:
        return live < self.used // 4 and self.size > 64

    def rebuild(self, min_size: int, h1: np.ndarray, slots: np.ndarray) -> None:
        """A fresh table of at least ``min_size`` positions holding exactly these entries."""
        size = 16
        while size < min_size:
            size *= 2
        self._tab = zeros((size, _TAB_COLS), np.uint64)
        self._tab_i = self._tab.view(np.int64)  # the same memory, for the signed slot column
        self._tab_i[:, _COL_SLOT] = EMPTY
        self.size = size
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self.used = 0  # live + tombstones
        if slots.size:
            self.insert(h1, slots)

    def remove(self, tpos: np.ndarray) -> None:
        """Tombstone the entries at table positions ``tpos`` (from :meth:`probe`)."""
        self._tab_i[tpos, _COL_SLOT] = TOMB

    def probe(self, h1: np.ndarray, h2: np.ndarray, slot_h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, table position) of each fingerprint, -1 where absent; all keys probed together (``slot_h2``:
        the second fingerprint half stored per slot).

        One probe for every key resolves most of them (one 16-byte table row holds the first fingerprint
        half and the slot; the slot's second half is checked after); the rest scan windows of ``_WINDOW``
        positions at a time (2-D gathers, so a long probe chain costs one numpy pass instead of one per step).
        """
        mask = np.int64(self.size - 1)
        pos = (h1 >> self._shift).astype(np.int64)
        rows = self._tab.take(pos, axis=0)
        ts = rows.view(np.int64)[:, _COL_SLOT]
        hit = (rows[:, _COL_H1] == h1) & (ts >= 0)
        hit &= slot_h2[np.where(hit, ts, 0)] == h2
        slots = np.where(hit, ts, -1)
        tpos = np.where(hit, pos, -1)
        act = np.flatnonzero(~hit & (ts != EMPTY))
        pos = pos[act] + 1
        offsets = np.arange(_WINDOW, dtype=np.int64)
        while act.size:
            win = (pos[:, None] + offsets) & mask
            wrows = self._tab[win]
            wts = wrows.view(np.int64)[..., _COL_SLOT]
            whit = (wrows[..., _COL_H1] == h1[act, None]) & (wts >= 0)
            stop = whit | (wts == EMPTY)
            first = stop.argmax(axis=1)
            r = np.arange(act.size)
            stopped = stop[r, first]
            is_hit = stopped & whit[r, first]
            cand = wts[r, first]
            ok = is_hit & (slot_h2[np.where(is_hit, cand, 0)] == h2[act])
            slots[act[ok]] = cand[ok]
            tpos[act[ok]] = win[r, first][ok]
            # go on: no stop in the window, or a first-half match whose second half differs
            again = ~stopped | (is_hit & ~ok)
            step = np.where(stopped, first + 1, _WINDOW)
            act, pos = act[again], (pos + step)[again]
        return slots, tpos

    def insert(self, h1: np.ndarray, slots: np.ndarray) -> None:
        """Place keys known to be absent at the first free position of their probe sequence."""
        mask = np.int64(self.size - 1)
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
                self.used += int(np.count_nonzero(slot_col[upos] == EMPTY))
                self._tab[upos, _COL_H1] = h1[win]
                slot_col[upos] = slots[win]
                placed[np.flatnonzero(free)[first]] = True
            todo = todo[~placed]
            pos[todo] = (pos[todo] + 1) & mask
