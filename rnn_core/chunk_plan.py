"""Which events of a micro-batch a scorer steps together: chunks of distinct keys that keep each key's order.

A batch is stepped ``rows`` events at a time (gather, step and scatter of a few hundred state rows stay in
the CPU cache). Within one chunk every key must appear once: the chunk's states are gathered before its
step and scattered after it. Keys repeat in a batch (a few times per 4k random events at a million keys, far
more often on skewed streams), so the plan is one compiled pass over the batch: each event goes to the first
chunk with room that comes after the chunk of its key's previous event. Events of keys seen once fill the
chunks in batch order; a repeated key's later event lands in a later chunk, so the steps apply each key's
events in order, and the batch still takes ``ceil(n / rows)`` steps unless a key's events outnumber them.
No copy of the events and no extra step when no key repeats within a chunk (the plan is then the identity).
"""

from __future__ import annotations

import numpy as np

from rnnstream.rnn_core.compiled_loop import compiled

__all__ = ["ChunkPlan", "plan_chunks"]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@compiled()
def _place(chunk_of, fill, n, chunks, order, bounds):
    """From each of the ``n`` events' chunk (``chunk_of``) and each chunk's event count (``fill``, reused):
    ``bounds`` (chunk offsets) and ``order`` (event indices chunk after chunk, batch order within one);
    returns whether ``order`` is not the identity."""
    bounds[0] = 0
    for c in range(chunks):
        bounds[c + 1] = bounds[c] + fill[c]
        fill[c] = bounds[c]  # now the next free position of chunk c in order
    moved = False
    for i in range(n):
        c = chunk_of[i]
        order[fill[c]] = i
        moved |= fill[c] != i
        fill[c] += 1
    return moved


@compiled()
def _plan(slots, rows, shift, seen, entry, chunk_of, fill, order, bounds):
    """Fill ``order`` (event indices chunk after chunk, batch order within one) and ``bounds`` (chunk
    offsets into it); returns (chunks, most events of one key, whether ``order`` is not the identity).

    The batch's distinct slots go into a small open-addressing set (``seen`` [size, 4]: slot or -1, the
    slot's first event, its count and the chunk of its latest event; a power of two at least twice the
    batch long), which stays in the CPU cache where per-slot arrays over a million keys would miss it on
    every event, one 32-byte entry a key. First the first events of keys that repeat take chunk 0 on (so a
    repeated key's later events have every later chunk to go to), then every other event in batch order
    takes the first chunk with room after its key's previous event's chunk.
    """
    n = slots.size
    mask = seen.shape[0] - 1
    repeats = False
    for i in range(n):
        s = slots[i]
        pos = np.int64((np.uint64(s) * _GOLDEN) >> shift)
        while seen[pos, 0] != -1 and seen[pos, 0] != s:
            pos = (pos + 1) & mask
        if seen[pos, 0] == -1:
            seen[pos, 0] = s
            seen[pos, 1] = i
            seen[pos, 2] = 0
            seen[pos, 3] = -1
        else:
            repeats = True
        seen[pos, 2] += 1
        entry[i] = pos
    most = 1
    chunks = (n + rows - 1) // rows
    if not repeats:  # the identity: chunk after chunk of ``rows`` events in batch order
        for i in range(n):
            seen[entry[i], 0] = -1
        for c in range(chunks + 1):
            bounds[c] = min(n, c * rows)
        return chunks, most, False
    first_open = 0  # chunks before it are full
    chunks = 0
    for phase in range(2):
        for i in range(n):
            e = entry[i]
            repeated_first = seen[e, 2] > 1 and seen[e, 1] == i
            if repeated_first != (phase == 0):
                continue
            c = max(first_open, seen[e, 3] + 1)
            while fill[c] == rows:
                c += 1
            chunk_of[i] = c
            seen[e, 3] = c
            fill[c] += 1
            most = max(most, seen[e, 2])
            chunks = max(chunks, c + 1)
            while fill[first_open] == rows:
                first_open += 1
    for i in range(n):
        seen[entry[i], 0] = -1
    return chunks, most, _place(chunk_of, fill, n, chunks, order, bounds)


@compiled()
def _plan_linked(prev, rows, count, chunk_of, fill, order, bounds):
    """:func:`_plan` from the batch's links instead of its slots: ``prev[i]`` is the previous event of
    event ``i``'s key in the batch (-1 for none; :meth:`.KeyedStateStore.lookup_linked` finds them during
    the lookup), so no set of the batch's keys is built. The same plan as :func:`_plan`: a key's events are
    placed in batch order, each after the chunk of the one before it. ``count`` (scratch [n]) ends up as
    each event's number within its key (1 for the first, then 2, ...), and as -1 for a first event whose
    key repeats."""
    n = prev.size
    most = 1
    for i in range(n):
        p = prev[i]
        if p < 0:
            count[i] = 1
        else:
            count[i] = abs(count[p]) + 1
            most = max(most, count[i])
            if count[p] == 1:
                count[p] = -1  # p is its key's first event and the key repeats
    chunks = (n + rows - 1) // rows
    if most == 1:  # the identity: chunk after chunk of ``rows`` events in batch order
        for c in range(chunks + 1):
            bounds[c] = min(n, c * rows)
        return chunks, most, False
    first_open = 0  # chunks before it are full
    chunks = 0
    for phase in range(2):
        for i in range(n):
            if (count[i] == -1) != (phase == 0):
                continue
            c = first_open if prev[i] < 0 else max(first_open, chunk_of[prev[i]] + 1)
            while fill[c] == rows:
                c += 1
            chunk_of[i] = c
            fill[c] += 1
            chunks = max(chunks, c + 1)
            while fill[first_open] == rows:
                first_open += 1
    return chunks, most, _place(chunk_of, fill, n, chunks, order, bounds)


class ChunkPlan:
    """The chunks of one batch: ``order`` (event indices, chunk after chunk, batch order within a chunk;
    None when it is the identity) and ``bounds`` (``chunks + 1`` offsets into it); ``most`` is the largest
    number of events of one key in the batch."""

    __slots__ = ("bounds", "most", "order")

    def __init__(self, order: np.ndarray | None, bounds: np.ndarray, most: int) -> None:
        self.order, self.bounds, self.most = order, bounds, most


class ChunkPlanner:
    """Plans batches, reusing its scratch arrays (sized for the largest batch so far)."""

    def __init__(self) -> None:
        self._size = 0

    def _grow(self, n: int) -> None:
        size = 16
        while size < 2 * n:
            size *= 2
        self._seen = np.full((size, 4), -1, np.int64)
        self._shift = np.uint64(64 - size.bit_length() + 1)
        self._entry = np.empty(n, np.int64)
        self._chunk_of = np.empty(n, np.int64)
        self._fill = np.zeros(n + 1, np.int64)
        self._size = n

    def plan(self, slots: np.ndarray, rows: int) -> ChunkPlan:
        """The chunks of ``slots`` (int64 [n], slot numbers >= 0), at most ``rows`` events each."""
        n = slots.size
        if n > self._size:
            self._grow(n)
        fill = self._fill
        order = np.empty(n, np.int64)
        bounds = np.empty(n + 1, np.int64)
        chunks, most, moved = _plan(
            slots, rows, self._shift, self._seen, self._entry, self._chunk_of, fill, order, bounds,
        )  # fmt: skip
        fill[: chunks + 1] = 0
        return ChunkPlan(order if moved else None, bounds[: chunks + 1], int(most))

    def plan_linked(self, prev: np.ndarray, rows: int) -> ChunkPlan:
        """The same plan from the batch's links (int64 [n]: each event's previous event of its key, -1 for
        none), as :meth:`.KeyedStateStore.lookup_linked` returns them: no set of the batch's keys to build."""
        n = prev.size
        if n > self._size:
            self._grow(n)
        fill = self._fill
        order = np.empty(n, np.int64)
        bounds = np.empty(n + 1, np.int64)
        chunks, most, moved = _plan_linked(prev, rows, self._entry, self._chunk_of, fill, order, bounds)
        fill[: chunks + 1] = 0
        return ChunkPlan(order if moved else None, bounds[: chunks + 1], int(most))


def plan_chunks(slots: np.ndarray, rows: int) -> ChunkPlan:
    """A one-off plan (tests, tools): see :class:`ChunkPlanner`."""
    return ChunkPlanner().plan(np.asarray(slots, np.int64), rows)
