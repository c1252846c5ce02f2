"""One owner per partition through the coordinator's other paths (pure functions, no Ray, no Kafka): a release
step that stops half way, and a restarted coordinator that finds a worker silent.

Each test plays the coordinator's steps over seeded random assignments and checks the rule exactly-once rests
on: a slot is told to own a partition only when no other live, unfenced slot may still own it.
"""

from __future__ import annotations

import random

from rnnstream.workers.control_plan import (
    WorkerReport,
    held_elsewhere,
    owned_after_release,
    plan_assignment,
    plan_handover,
    resumed_ownership,
)


def _second_owners(told: dict[int, list[int]], may_own: dict[int, set[int]]) -> list[tuple[int, int, int]]:
    """(partition, told slot, other slot): each partition a slot is told to own while another may own it."""
    return [
        (p, s, o) for s, ps in told.items() for p in ps for o, own in may_own.items() if o != s and p in own
    ]


def test_a_release_step_stopped_half_way_assigns_no_partition_twice():
    """Rescale 2 -> 3: slot 0 releases cleanly, slot 1 neither releases nor can be fenced (the step raises
    there). The assignment left behind is what the watch gives each slot: slot 0 must not be given
    partition 3, which slot 1 still owns and commits."""
    current = plan_assignment(4, 2)  # {0: [0, 2], 1: [1, 3]}
    plan = plan_handover(current, [0, 1], 4, 3)
    assert plan.target[0] == [0, 3]
    left = {**current, 0: owned_after_release(plan, 0, released_cleanly=True)}
    assert left == {0: [0], 1: [1, 3]}
    assert not _second_owners(left, {0: {0}, 1: {1, 3}})


def test_release_steps_stopped_anywhere_assign_no_partition_twice():
    """Over seeded random rescales, some slots restarted (owning nothing), each release answering cleanly or
    not (then fenced), and the step stopping at a random slot that cannot be fenced: no partition the
    assignment names is owned by another live, unfenced slot, and every slot's entry covers what it owns."""
    rng = random.Random(7)
    checked = 0
    for _ in range(2000):
        partitions, before, after = rng.randint(1, 12), rng.randint(1, 5), rng.randint(1, 5)
        current = plan_assignment(partitions, before)
        for s in rng.sample(sorted(current), rng.randint(0, before)):
            current[s] = []
        plan = plan_handover(current, sorted(current), partitions, after)
        waited = [*plan.releases, *plan.retire]  # the order the coordinator waits for their answers
        if not waited:
            continue
        stuck = rng.randrange(len(waited))
        assignment = {s: list(ps) for s, ps in current.items()}
        may_own = {s: set(ps) for s, ps in current.items()}  # a slot not waited for yet may still own all
        for s in waited[:stuck]:
            clean = rng.random() < 0.7
            assignment[s] = owned_after_release(plan, s, clean)
            may_own[s] = set(plan.releases.get(s, [])) if clean else set()  # fenced: it commits nothing
        assert not _second_owners(assignment, may_own), (current, plan, waited[stuck])
        assert all(may_own[s] <= set(assignment[s]) for s in waited[:stuck])
        checked += 1
    assert checked > 1000


def test_a_worker_silent_at_resume_is_fenced_before_its_partitions_move():
    """A coordinator restarted during a rescale 2 -> 3 (before any release) finds slot 1 silent (SIGSTOPped:
    it still owns 1 and 3 and commits them once woken). Taken to own nothing, slot 1 would get no release
    and partition 3 would go to slot 0: it is fenced (and restarted) first."""
    owned, silent = resumed_ownership([WorkerReport(0, True, partitions=(0, 2)), WorkerReport(1, False)])
    assert owned == {0: [0, 2], 1: []} and silent == [1]
    plan = plan_handover(owned, [0, 1], 4, 3)
    assert 1 not in plan.releases and 3 in plan.target[0]  # why slot 1 must be fenced before step 3


def test_resumed_rescales_hand_out_no_partition_a_silent_worker_owns():
    """Over seeded random rescales interrupted before their release step, with random workers silent: once
    the slots :func:`resumed_ownership` names are fenced, the release step and the take step give no slot a
    partition another live, unfenced slot may own."""
    rng = random.Random(11)
    checked = 0
    for _ in range(2000):
        partitions, before, after = rng.randint(1, 12), rng.randint(1, 5), rng.randint(1, 5)
        truth = plan_assignment(partitions, before)  # what the workers own when the coordinator comes back
        quiet = set(rng.sample(sorted(truth), rng.randint(0, before)))
        reports = [
            WorkerReport(s, True, partitions=tuple(ps)) if s not in quiet else WorkerReport(s, False)
            for s, ps in truth.items()
        ]
        owned, silent = resumed_ownership(reports)
        assert set(silent) == quiet
        may_own = {s: set() if s in silent else set(ps) for s, ps in truth.items()}  # fenced: nothing
        plan = plan_handover(owned, sorted(owned), partitions, after)
        for s, kept in plan.releases.items():  # step 1: releases (to what they keep)
            assert not _second_owners({s: kept}, may_own)
            may_own[s] &= set(kept)
        for s in plan.retire:
            may_own[s] = set()
        assert not _second_owners(plan.target, may_own), (truth, quiet, plan)  # step 3: every slot its target
        checked += bool(quiet)
    assert checked > 1000


def test_the_watch_gives_no_slot_a_partition_another_worker_reports():
    """Whatever the assignment says (here the old release step's: slot 0 recorded with its whole target
    [0, 3] while slot 1 still owns 3), the watch holds back what another worker reports owning."""
    reports = [WorkerReport(0, True, partitions=(0,)), WorkerReport(1, True, partitions=(1, 3))]
    assert held_elsewhere(0, [0, 3], reports) == {3: 1}
    assert held_elsewhere(1, [1], reports) == {}  # dropping is never held back
    assert held_elsewhere(0, [0], reports) == {}
    # a worker whose loop ended holds its partitions until it is restarted (its last transaction may be open)
    ended = [WorkerReport(0, True), WorkerReport(1, True, alive=False, partitions=(2,))]
    assert held_elsewhere(0, [2], ended) == {2: 1}
    # a restarted worker (it owns nothing) takes its partitions back once nobody else reports them
    assert held_elsewhere(0, [0, 2], [WorkerReport(0, True, incarnation="new"), WorkerReport(1, True)]) == {}
