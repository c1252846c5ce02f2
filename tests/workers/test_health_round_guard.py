"""A health round that fails (e.g. Ray refusing a restart) must not end the coordinator's watch: the error is
counted and the next round runs again."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from rnnstream.workers.health_round import guarded_health_round


class _SlotsThatFail:
    """Worker slots whose status call raises the first ``fail`` times, then report no workers."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls = 0

    def items(self) -> list:
        self.calls += 1
        if self.calls <= self.fail:
            raise RuntimeError("the actor is unavailable")
        return []


def _coordinator(slots: _SlotsThatFail) -> SimpleNamespace:
    return SimpleNamespace(
        workers=slots,
        swap=None,
        shadow_handle=None,
        health_errors=0,
        ownership_conflicts=0,
        assignment={},
        _lock=threading.Lock(),
    )


def test_a_failing_round_is_counted_and_the_next_one_runs():
    coord = _coordinator(_SlotsThatFail(fail=2))
    for _ in range(3):
        guarded_health_round(coord)  # never raises
    assert coord.health_errors == 2
    assert coord.workers.calls == 3  # the third round ran, after two failed ones
