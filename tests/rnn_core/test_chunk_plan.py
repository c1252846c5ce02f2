"""chunk_plan: chunks of distinct keys, each key's events in order, and no more chunks than needed."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.rnn_core.chunk_plan import ChunkPlanner, plan_chunks


def check(slots: np.ndarray, rows: int, plan_order: np.ndarray | None, bounds: np.ndarray) -> None:
    n = slots.size
    order = np.arange(n) if plan_order is None else plan_order
    assert np.array_equal(np.sort(order), np.arange(n))  # every event once
    assert bounds[0] == 0 and bounds[-1] == n and (np.diff(bounds) > 0).all()
    assert (np.diff(bounds) <= rows).all()
    chunk_of = np.empty(n, np.int64)
    for c in range(bounds.size - 1):
        idx = order[bounds[c] : bounds[c + 1]]
        assert np.unique(slots[idx]).size == idx.size  # a key once a chunk
        assert (np.diff(idx) > 0).all()  # batch order within a chunk
        chunk_of[idx] = c
    for s in np.unique(slots):
        events = np.flatnonzero(slots == s)
        assert (np.diff(chunk_of[events]) > 0).all()  # a key's events in order


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rows", [1, 3, 16, 1024])
def test_random_batches(seed: int, rows: int) -> None:
    rng = np.random.default_rng(seed)
    planner = ChunkPlanner()  # reused across batches of different sizes, as a scorer does
    for n, keys in [(50, 7), (200, 150), (5, 1), (300, 10_000), (1, 1)]:
        slots = rng.integers(0, keys, n).astype(np.int64) * 3 + 1  # sparse slot numbers
        plan = planner.plan(slots, rows)
        check(slots, rows, plan.order, plan.bounds)
        assert plan.most == np.unique(slots, return_counts=True)[1].max()
        _, counts = np.unique(slots, return_counts=True)
        if counts.max() <= 2 and n >= 2 * rows:
            assert plan.bounds.size - 1 == -(-n // rows)  # keys twice at most: no extra chunk


def test_distinct_keys_keep_batch_order() -> None:
    plan = plan_chunks(np.arange(10, 0, -1), 4)
    assert plan.order is None
    assert plan.bounds.tolist() == [0, 4, 8, 10]
    assert plan.most == 1


def test_one_key_all_the_time() -> None:
    plan = plan_chunks(np.zeros(5, np.int64), 1024)
    assert plan.bounds.tolist() == [0, 1, 2, 3, 4, 5]
    assert plan.most == 5


def links_of(slots: np.ndarray) -> np.ndarray:
    """Each event's previous event of the same slot (-1 for none), the slow way."""
    prev = np.full(slots.size, -1, np.int64)
    last: dict[int, int] = {}
    for i, s in enumerate(slots.tolist()):
        prev[i] = last.get(s, -1)
        last[s] = i
    return prev


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rows", [1, 3, 16, 256])
def test_plan_from_links_is_the_plan_from_slots(seed: int, rows: int) -> None:
    """plan_linked (the scorer's: links found during the lookup) gives exactly plan's chunks, on batches
    from all distinct keys to a few keys repeated many times."""
    rng = np.random.default_rng(seed)
    planner = ChunkPlanner()
    for n, keys in ((1, 5), (300, 10**6), (300, 40), (1000, 3), (700, 700)):
        slots = rng.integers(0, keys, n).astype(np.int64)
        want = planner.plan(slots, rows)
        got = planner.plan_linked(links_of(slots), rows)
        check(slots, rows, got.order, got.bounds)
        assert got.most == want.most
        np.testing.assert_array_equal(got.bounds, want.bounds)
        assert (got.order is None) == (want.order is None)
        if want.order is not None:
            np.testing.assert_array_equal(got.order, want.order)
