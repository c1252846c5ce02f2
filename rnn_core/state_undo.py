"""The undo log that makes one ``StreamScorer.score`` call all or nothing.

While a call runs, every state and last event time it is about to change is logged first (states copied into
one reused buffer); when the call raises, :meth:`StateUndoLog.roll_back` puts them back, newest change first.
Entries are by slot, or by key where a slot may change hands within the call (a key forgotten, then a new
key in its slot): such a key, if forgotten meanwhile, is created again to take its old state back.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.state_store import KeyedStateStore


class StateUndoLog:
    """States and times of a store's slots as they were before the current call changed them."""

    def __init__(self, state_shape: tuple[int, ...]) -> None:
        self._entries: list[tuple[np.ndarray, int, np.ndarray]] | None = None  # (slots or keys, row, times)
        self.by_key = False  # log keys instead of slots from now on (slots may be reused within the call)
        self._rows = np.zeros((0, int(np.prod(state_shape))), np.float32)  # reused buffer
        self._used = 0

    def begin(self) -> None:
        """Start logging a call (forgets whatever an earlier call logged)."""
        self._entries, self.by_key, self._used = [], False, 0

    def end(self) -> None:
        """Stop logging: the call is over (done or rolled back)."""
        self._entries = None

    def take(self, store: KeyedStateStore, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gather the states and times of distinct ``slots`` (int64) and log them in the same pass: returns
        (states ``float32 [m, S, L, H]``, a view of the log's buffer that stays valid until the next
        :meth:`begin`; times int64 [m]). The scorer steps from these states, so logging costs no copy."""
        m = slots.size
        start, rows = self.reserve(m)
        dest = rows.reshape(m, *store.state_shape)
        times = np.empty(m, np.int64)
        store.gather_states(slots, dest, times)
        if self._entries is not None:
            ids = store.slot_keys(slots) if self.by_key else slots.copy()
            self._entries.append((ids, start, times))
        return dest, times

    def reserve(self, m: int) -> tuple[int, np.ndarray]:
        """The next ``m`` rows of the log's buffer (float32 [m, S*L*H]) and where they start, for a caller
        that gathers a whole batch's states into them and then logs them with :meth:`log_chunks`. Outside a
        call nothing is logged and the buffer is scratch."""
        if self._entries is None:
            self._used = 0
        start = self._used
        return start, self._reserve(m)

    def log_chunks(
        self, store: KeyedStateStore, start: int, slots: np.ndarray, times: np.ndarray, bounds: list[int],
        done: int,
    ) -> None:  # fmt: skip
        """Log the chunks ``[bounds[c], bounds[c + 1])`` below ``done`` of a batch gathered into the rows
        from ``start`` (:meth:`reserve`): each chunk's distinct ``slots`` and their last ``times`` (kept,
        not copied, until the next :meth:`begin`). One entry a chunk, so that rolling back newest first
        puts back each key's state from before its first event even when it has several in the batch."""
        if self._entries is None:
            return
        for lo, hi in pairwise(bounds):
            if lo >= done:
                break
            c_slots = slots[lo:hi]
            ids = store.slot_keys(c_slots) if self.by_key else c_slots
            self._entries.append((ids, start + lo, times[lo:hi]))

    def _reserve(self, m: int) -> np.ndarray:
        """The next ``m`` rows of the buffer (grown when needed, logged rows kept), marked used."""
        start = self._used
        if self._rows.shape[0] < start + m:
            grown = np.empty((max(start + m, 2 * self._rows.shape[0]), self._rows.shape[1]), np.float32)
            grown[:start] = self._rows[:start]
            self._rows = grown
        self._used = start + m
        return self._rows[start : start + m]

    def remember(
        self,
        store: KeyedStateStore,
        slots: np.ndarray,
        rows: torch.Tensor | None = None,
        by_key: bool = False,
    ) -> None:
        """Log the state and time ``slots`` hold now (``rows``: their states, when already gathered)."""
        if self._entries is None or slots.size == 0:
            return
        m, start = slots.size, self._used
        dest = self._reserve(m)
        if rows is None:
            store.gather_slots(slots, out=dest.reshape(m, *store.state_shape))
        else:
            np.copyto(dest, rows.numpy().reshape(m, -1))
        ids = store.slot_keys(slots) if by_key or self.by_key else slots.copy()
        self._entries.append((ids, start, store.slot_times(slots)))

    def roll_back(self, store: KeyedStateStore) -> None:
        """Put back every state and time logged in this call, newest change first."""
        for ids, start, times in reversed(self._entries or []):
            if ids.dtype == object:  # by key: the key may have been forgotten (it is created again)
                ids = store.lookup(pa.array(ids.tolist(), pa.string()), create=True)
            rows = self._rows[start : start + len(times)]
            store.scatter_slots(ids, torch.from_numpy(rows.reshape(len(times), *store.state_shape)), times)
