"""The coordinator's decisions as pure functions over small values (no Ray, no Kafka): testable alone.

In the spirit of Ray Train v2's ``failure_policy.make_decision``: the coordinator gathers what it observes
(a :class:`WorkerReport` per slot, the swap's progress) and asks these functions what to do; it then does
it. Nothing here performs I/O, so every rule (who owns which partition, when a worker is restarted, when a
partition may move, when a swap switches or is abandoned) is decided the same way after a restart of the
coordinator as before it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def plan_assignment(num_partitions: int, num_workers: int) -> dict[int, list[int]]:
    """Slot -> partitions: partition ``p`` goes to slot ``p % num_workers``."""
    return {s: [p for p in range(num_partitions) if p % num_workers == s] for s in range(num_workers)}


@dataclass(frozen=True)
class WorkerReport:
    """What one worker slot said when asked for its status (``reachable=False``: it did not answer)."""

    slot: int
    reachable: bool
    alive: bool = True
    stalled: bool = False
    incarnation: str | None = None
    partitions: tuple[int, ...] = ()
    challenger_version: str | None = None
    fenced: bool = False


class WorkerAction(enum.Enum):
    """What the health watch does with one slot this round."""

    NOTHING = "nothing"
    WAIT = "wait"  # no answer (restarting, or busy): ask again next round
    RESTART = "restart"  # its loop ended (fenced, crashed) or it stalled while owning partitions
    REASSIGN = "reassign"  # it restarted, or owns other partitions than it should


@dataclass(frozen=True)
class WorkerDecision:
    action: WorkerAction
    reason: str = ""
    rearm_challenger: bool = False  # give it the challenger again (it restarted during a swap or shadow)


def decide_worker(
    report: WorkerReport,
    wanted: Sequence[int],
    known_incarnation: str | None,
    challenger_version: str | None,
) -> WorkerDecision:
    """The health rule for one slot: restart a dead or stalled loop, re-assign a restarted or drifted one."""
    if not report.reachable:
        return WorkerDecision(WorkerAction.WAIT, "no answer")
    if not report.alive:
        return WorkerDecision(WorkerAction.RESTART, "fenced" if report.fenced else "loop ended")
    if report.stalled and report.partitions:
        return WorkerDecision(WorkerAction.RESTART, "stalled")
    restarted = report.incarnation != known_incarnation
    if restarted or sorted(report.partitions) != sorted(wanted):
        rearm = challenger_version is not None and report.challenger_version != challenger_version
        return WorkerDecision(WorkerAction.REASSIGN, "restarted" if restarted else "partitions differ", rearm)
    if challenger_version is not None and report.challenger_version != challenger_version:
        return WorkerDecision(WorkerAction.REASSIGN, "challenger missing", True)
    return WorkerDecision(WorkerAction.NOTHING)


def ownership_conflicts(reports: Sequence[WorkerReport]) -> dict[int, list[int]]:
    """Partitions that more than one reachable, live worker says it owns: partition -> slots (a bug if
    ever non-empty; the coordinator logs and counts it)."""
    owners: dict[int, list[int]] = {}
    for r in reports:
        if r.reachable and r.alive:
            for p in r.partitions:
                owners.setdefault(p, []).append(r.slot)
    return {p: slots for p, slots in owners.items() if len(slots) > 1}


def held_elsewhere(slot: int, wanted: Sequence[int], reports: Sequence[WorkerReport]) -> dict[int, int]:
    """Of the partitions ``slot`` is to take (``wanted`` less what its own report shows), those another
    worker reports owning (its loop alive or not: one that ended without Kafka may not have settled its last
    transaction): partition -> that slot. The watch gives ``slot`` nothing while this is non-empty (the
    other owner is told to drop them, or restarted, first), whatever the assignment says."""
    own = next((set(r.partitions) for r in reports if r.slot == slot), set())
    held = {p: r.slot for r in reports if r.slot != slot and r.reachable for p in r.partitions}
    return {p: held[p] for p in sorted(set(wanted) - own) if p in held}


@dataclass(frozen=True)
class Handover:
    """How to go from one assignment to another (see :func:`plan_handover`)."""

    releases: dict[int, list[int]]  # slot -> the partitions it keeps, for slots that lose some
    retire: list[int]  # slots that go away
    start: list[int]  # slots to start
    target: dict[int, list[int]]  # the assignment once done


def plan_handover(
    current: Mapping[int, Sequence[int]], existing_slots: Sequence[int], num_partitions: int, num_workers: int
) -> Handover:
    """Every owner first gives up what it loses (commit + final checkpoint), then new owners take it.

    ``current`` is what each slot owns now (from the workers' own reports); a partition is only ever handed
    to its new owner after the old owner released it, or, when the old owner cannot, after its
    transactional id was fenced (:func:`must_fence_before_handover`).
    """
    target = plan_assignment(num_partitions, num_workers)
    # a slot that loses partitions is told to keep only what it owns *and* keeps: were it given its whole
    # target here, it would take partitions their old owners still score and commit (scores twice)
    releases = {
        s: sorted(set(current.get(s, ())) & set(target.get(s, [])))
        for s in existing_slots
        if s < num_workers and set(current.get(s, ())) - set(target.get(s, []))
    }
    retire = sorted(s for s in existing_slots if s >= num_workers)
    start = [s for s in range(num_workers) if s not in set(existing_slots)]
    return Handover(releases=releases, retire=retire, start=start, target=target)


def must_fence_before_handover(released_cleanly: bool, stopped: bool = False) -> bool:
    """A slot that did not release (dead, stuck, SIGSTOPped, cut off) may still hold an open transaction or
    wake up later: its transactional id is fenced before anyone else takes its partitions, so the broker
    refuses any commit it attempts afterwards.

    A slot that was ``stopped`` (retired) is fenced even when its stop answered: a worker that cannot reach
    Kafka answers a stop at once, without a final commit, and its last transaction may still be settling."""
    return stopped or not released_cleanly


def owned_after_release(handover: Handover, slot: int, released_cleanly: bool) -> list[int]:
    """What ``slot`` owns once its release step ended: what it keeps when it released cleanly (a retired
    slot: nothing), nothing when it did not (it was fenced, then restarted or retired).

    Never its target: what it is to take may still be owned by a slot whose release has not ended, and
    when the release step stops half way (a slot that can be neither released nor fenced) the assignment
    is left as this says, so the watch, which gives each slot what the assignment names, hands no
    partition to a second owner.
    """
    return list(handover.releases.get(slot, [])) if released_cleanly else []


def resumed_ownership(reports: Sequence[WorkerReport]) -> tuple[dict[int, list[int]], list[int]]:
    """A restarted coordinator's view of who owns what, from the workers' own reports, and the slots to
    fence (then restart) before any partition moves.

    A slot that did not answer may own partitions and go on committing them: it is taken to own nothing
    only once its transactional id is fenced; were it taken to own nothing as it is, a rescale the restart
    interrupted would give its partitions to other slots while it still scores them.
    """
    owned = {r.slot: sorted(r.partitions) if r.reachable else [] for r in reports}
    return owned, sorted(r.slot for r in reports if not r.reachable)


class SwapStep(enum.Enum):
    WAIT = "wait"
    SWITCH = "switch"
    ABANDON = "abandon"


@dataclass(frozen=True)
class SwapDecision:
    step: SwapStep
    reason: str = ""


def decide_swap(
    challenger_events: Mapping[int, int | None], warmup_events: int, elapsed_s: float, timeout_s: float
) -> SwapDecision:
    """The swap rule: switch once every worker's challenger saw ``warmup_events`` events; abandon at the
    timeout, naming the slots that lagged (``None``: that slot did not answer). A worker with no partitions
    counts as warm (it has nothing to learn)."""
    short = {s: n for s, n in challenger_events.items() if n is None or n < warmup_events}
    if not short:
        return SwapDecision(SwapStep.SWITCH)
    if elapsed_s >= timeout_s:
        seen = ", ".join(f"worker {s}: {'no answer' if n is None else n}" for s, n in sorted(short.items()))
        return SwapDecision(
            SwapStep.ABANDON,
            f"challenger not warm after {timeout_s:.0f} s ({seen}; {warmup_events} events needed)",
        )
    return SwapDecision(SwapStep.WAIT)
