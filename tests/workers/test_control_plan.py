"""The coordinator's decisions, as pure functions (no Ray, no Kafka), and its durable record."""

from __future__ import annotations

import dataclasses
import random

import pytest

from rnnstream.workers.control_plan import (
    SwapStep,
    WorkerAction,
    WorkerReport,
    decide_swap,
    decide_worker,
    must_fence_before_handover,
    ownership_conflicts,
    plan_assignment,
    plan_handover,
)
from rnnstream.workers.control_record import ControlRecord, ControlRecordFile, SwapInProgress
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig
from tests.workers.worker_harness import make_schema


def _report(**kw) -> WorkerReport:
    return WorkerReport(**{"slot": 0, "reachable": True, "incarnation": "a", "partitions": (0, 2), **kw})


def test_health_rule_per_slot():
    assert decide_worker(_report(), [0, 2], "a", None).action is WorkerAction.NOTHING
    assert decide_worker(_report(reachable=False), [0, 2], "a", None).action is WorkerAction.WAIT
    dead = decide_worker(_report(alive=False, fenced=True), [0, 2], "a", None)
    assert dead.action is WorkerAction.RESTART and dead.reason == "fenced"
    assert decide_worker(_report(stalled=True), [0, 2], "a", None).action is WorkerAction.RESTART
    # a stalled worker that owns nothing has nothing to be late with
    assert decide_worker(_report(stalled=True, partitions=()), [], "a", None).action is WorkerAction.NOTHING
    restarted = decide_worker(_report(incarnation="b", partitions=()), [0, 2], "a", None)
    assert restarted.action is WorkerAction.REASSIGN and restarted.reason == "restarted"
    assert not restarted.rearm_challenger
    drifted = decide_worker(_report(partitions=(0,)), [0, 2], "a", None)
    assert drifted.action is WorkerAction.REASSIGN and drifted.reason == "partitions differ"
    # during a swap (or shadow), a restarted worker gets the challenger again instead of stalling the swap
    during_swap = decide_worker(_report(incarnation="b", partitions=()), [0, 2], "a", "v2")
    assert during_swap.action is WorkerAction.REASSIGN and during_swap.rearm_challenger
    lost = decide_worker(_report(challenger_version=None), [0, 2], "a", "v2")
    assert lost.action is WorkerAction.REASSIGN and lost.rearm_challenger
    armed = decide_worker(_report(challenger_version="v2"), [0, 2], "a", "v2")
    assert armed.action is WorkerAction.NOTHING


def test_one_owner_per_partition_is_checked():
    reports = [
        _report(slot=0, partitions=(0, 2)),
        _report(slot=1, partitions=(1, 2)),
        _report(slot=2, partitions=(2,), alive=False),  # a dead loop owns nothing
        _report(slot=3, reachable=False),
    ]
    assert ownership_conflicts(reports) == {2: [0, 1]}
    assert ownership_conflicts(reports[:1]) == {}


def test_handover_plans():
    assert plan_assignment(5, 2) == {0: [0, 2, 4], 1: [1, 3]}
    up = plan_handover({0: [0, 2, 4], 1: [1, 3]}, [0, 1], 5, 3)
    assert up.target == {0: [0, 3], 1: [1, 4], 2: [2]}
    # the release step only shrinks: slot 0 keeps 0 (3 is still slot 1's), slot 1 keeps 1 (4 is slot 0's)
    assert up.releases == {0: [0], 1: [1]} and up.retire == [] and up.start == [2]
    down = plan_handover(up.target, [0, 1, 2], 5, 2)
    assert down.retire == [2] and down.start == [] and set(down.releases) == {0, 1}
    # a slot that already lost its partitions (it restarted) has nothing to release
    after_crash = plan_handover({0: [], 1: [1, 3]}, [0, 1], 5, 2)
    assert after_crash.releases == {} and after_crash.target == {0: [0, 2, 4], 1: [1, 3]}
    assert must_fence_before_handover(released_cleanly=False)
    assert not must_fence_before_handover(released_cleanly=True)


def test_release_step_never_hands_out_an_owned_partition():
    """Between the release step and the take step two slots may never own one partition: each release
    keeps a subset of what its slot owns (checked over seeded random assignments and sizes)."""
    rng = random.Random(0)
    for _ in range(500):
        partitions, before, after = rng.randint(1, 12), rng.randint(1, 5), rng.randint(1, 5)
        current = {s: sorted(ps) for s, ps in plan_assignment(partitions, before).items()}
        for s in rng.sample(sorted(current), rng.randint(0, before)):  # some slots restarted owning nothing
            current[s] = []
        plan = plan_handover(current, sorted(current), partitions, after)
        for s, kept in plan.releases.items():
            assert set(kept) <= set(current[s]) and set(kept) <= set(plan.target[s])
        owned_between = [p for s in current if s not in plan.retire for p in plan.releases.get(s, current[s])]
        assert len(owned_between) == len(set(owned_between))
        assert sorted(p for ps in plan.target.values() for p in ps) == list(range(partitions))


def test_swap_rule():
    assert decide_swap({0: 1000, 1: 1200}, 1000, 1.0, 60).step is SwapStep.SWITCH
    assert decide_swap({0: 1000, 1: 10}, 1000, 1.0, 60).step is SwapStep.WAIT
    gave_up = decide_swap({0: 1000, 1: 10, 2: None}, 1000, 61.0, 60)
    assert gave_up.step is SwapStep.ABANDON
    assert "worker 1: 10" in gave_up.reason and "worker 2: no answer" in gave_up.reason
    assert "worker 0" not in gave_up.reason


def test_control_record_round_trips_atomically(tmp_path, kafka_settings):
    schema = make_schema("rec")
    config = WorkerConfig(
        pipeline="rec", schema=schema, kafka=kafka_settings, checkpoint_uri=str(tmp_path), deployment="blue"
    )
    records = ControlRecordFile(config)
    assert records.read() is None
    v1, v2 = ModelHandle("v1", "/m1"), ModelHandle("v2", "models:/x/2")
    record = ControlRecord(pipeline="rec", num_workers=3, serving=v1, generation=4)
    record = dataclasses.replace(record, swap=SwapInProgress(v2, "warming", 500, False, 1.5), shadow=v2)
    records.write(record)
    assert records.path == f"{tmp_path}/blue/rec/control.json"
    assert records.read() == record
    done = dataclasses.replace(record, swap=None, swaps=({"to": "v2", "switch_offsets": {"0": 7}},))
    records.write(done)
    back = records.read()
    assert back.swap is None and back.swaps == ({"to": "v2", "switch_offsets": {"0": 7}},)
    assert [p.name for p in (tmp_path / "blue" / "rec").iterdir()] == ["control.json"]  # no temp left
    (tmp_path / "blue" / "rec" / "control.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="unknown format"):
        records.read()


def test_status_line_tells_the_control_plane_state():
    from rnnstream.workers.serving import status_line

    base = {"pipeline": "p", "workers": [], "generation": 3, "coordinator_resumes": 1}
    ok = status_line(
        {**base, "model_version": "v2", "swaps": [{"to": "v2", "keys_warmed": 5, "keys_cold": 1}]}
    )
    assert "gen=3 coordinator_resumes=1" in ok and "keys warmed 5, cold 1" in ok
    failed = status_line(
        {**base, "model_version": "v1", "swaps": [{"to": "v2", "error": "TimeoutError: slow"}]}
    )
    assert "swap to v2 FAILED: TimeoutError: slow" in failed
    swapping = status_line(
        {**base, "model_version": "v1", "swap_in_progress": "v2", "ownership_conflicts": 2}
    )
    assert "swapping_to=v2" in swapping and "OWNERSHIP CONFLICTS seen 2 times" in swapping
