"""The control-plane chaos scenario (issue 14), shared by ``tests/workers/test_control_plane_chaos.py`` and
``benchmarks/chaos.py``; holds no tests.

One stream on the real broker and a real local Ray, produced in segments; during each segment one fault:

1. kill -9 of the coordinator (the workers keep scoring; Ray restarts it and it resumes from its record);
2. a rescale 2 -> 3 with a worker SIGKILLed while the partitions move;
3. a worker SIGSTOPped, then a rescale 3 -> 2 that must hand its partitions over (it is fenced first), then
   SIGCONT;
4. a new version promoted (the champion pointer rewritten; the coordinator's probe starts the swap), and the
   coordinator SIGKILLed again during the warm-up (the resumed one abandons that swap, says why, and its
   probe swaps again).

Then every event is checked against the offline reference of the model that scored it (read_committed), and
the final states against the new model's offline run from its warm-up offsets.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rnnstream.workers.control_record import ControlRecordFile
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.score_verifier import (
    checkpoint_states,
    offline_reference,
    read_events,
    read_scores,
    verify,
)
from rnnstream.workers.serving import stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    make_events,
    make_model,
    produce,
    scoring_stream,
    start_following_pointer,
    wait_for,
    worker_config,
)

PARTITIONS = 4


def _status(coord: Any, timeout: float = 5.0) -> dict[str, Any] | None:
    import ray

    try:
        return ray.get(coord.status.remote(), timeout=timeout)
    except Exception:
        return None


def _settled(coord: Any, workers: int) -> bool:
    st = _status(coord)
    return (
        st is not None
        and st["ready"]
        and st["num_workers"] == workers
        and all(w.get("partitions") == w.get("assigned") for w in st["workers"])
        and sorted(p for w in st["workers"] for p in w.get("partitions", [])) == list(range(PARTITIONS))
    )


def run_chaos(
    settings: KafkaSettings, workdir: Path, n_events: int = 50_000, n_keys: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Run the scenario (Ray must be initialized); returns the figures ``benchmarks/chaos.py`` prints.

    The stream comes in six equal segments; the warm-up asks each of the two workers for more events than
    one segment brings (0.6 of one), so the coordinator's death always falls into the warm-up, and the
    retried swap completes on the last two segments."""
    warmup_events = int(0.6 * n_events / 6)
    import ray

    settings, _, schema, model_a, handle_a = scoring_stream(
        settings, "chaos", PARTITIONS, workdir / "model-a", seed=seed
    )
    model_b, handle_b = make_model(schema, workdir / "model-b", seed=seed + 1)
    pointer = workdir / "champion"
    pointer.write_text(str(workdir / "model-a"))
    events = make_events(schema, n_events, n_keys, seed=seed)
    config = worker_config(settings, schema, workdir / "ckpt")
    coord = start_following_pointer(
        config,
        handle_a,
        pointer,
        PARTITIONS,
        warmup_events=warmup_events,
        stall_timeout_s=15.0,
        release_timeout_s=5.0,
    )
    bounds = [i * n_events // 6 for i in range(7)]
    segments = [events.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    released = [threading.Event() for _ in segments]
    released[0].set()

    def producer() -> None:
        for segment, go in zip(segments, released, strict=True):
            go.wait()
            for i in range(0, segment.num_rows, 200):
                produce(settings, schema, segment.slice(i, 200))
                time.sleep(0.05)

    feeding = threading.Thread(target=producer, daemon=True)
    feeding.start()
    recovery: list[float] = []
    zombie_parts: list[int] = []
    try:
        # 1. the coordinator dies; the workers go on; it comes back and resumes
        wait_for(lambda: (_status(coord) or {}).get("workers") and _scored(coord) > 2000, 60, "scoring")
        scored_before = _scored(coord)
        _kill(ray.get(coord.pid.remote(), timeout=30), signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: (_status(coord) or {}).get("coordinator_resumes") == 1, 60, "the coordinator back")
        wait_for(lambda: _settled(coord, 2), 60, "the resumed coordinator settled")
        recovery.append(time.monotonic() - t0)
        assert _scored(coord) > scored_before
        released[1].set()

        # 2. rescale 2 -> 3, a worker SIGKILLed while partitions move
        pids = ray.get(coord.worker_pids.remote(), timeout=30)
        generation = _status(coord, 30)["generation"]
        rescale = coord.scale.remote(3)
        # the coordinator bumps the generation as the handover starts: kill a worker from then on
        wait_for(
            lambda: (_status(coord) or {}).get("generation", 0) > generation, 60, "the rescale under way"
        )
        _kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        try:
            ray.get(rescale, timeout=300)
        except Exception as exc:  # the watch finishes what the interrupted rescale left
            print("rescale 2 -> 3 interrupted:", exc)
        wait_for(lambda: _settled(coord, 3), 120, "three workers owning every partition")
        recovery.append(time.monotonic() - t0)
        released[2].set()

        # 3. a worker frozen past its handover (fenced, replaced), woken afterwards
        st = _status(coord, 30)
        zombie = next(w for w in st["workers"] if w["slot"] == 2)
        zombie_parts = list(zombie["partitions"])
        _kill(zombie["pid"], signal.SIGSTOP)
        t0 = time.monotonic()
        ray.get(coord.scale.remote(2), timeout=300)
        _kill(zombie["pid"], signal.SIGCONT)
        wait_for(lambda: _settled(coord, 2), 120, "two workers owning every partition")
        recovery.append(time.monotonic() - t0)
        released[3].set()

        # 4. promotion mid-stream, the coordinator killed during the warm-up; the stream goes on after it is
        # back (the resumed coordinator's probe warms the new version again on that traffic)
        pointer.write_text(str(workdir / "model-b"))
        wait_for(lambda: (_status(coord) or {}).get("swap_in_progress") == handle_b.version, 60, "the swap")
        shown = ControlRecordFile(config).read()  # what the status showed must already be in the record
        swap_recorded = bool(shown and shown.swap and shown.swap.to.version == handle_b.version)
        _kill(ray.get(coord.pid.remote(), timeout=30), signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: (_status(coord) or {}).get("coordinator_resumes") == 2, 60, "the coordinator back")
        recovery.append(time.monotonic() - t0)
        released[4].set()
        released[5].set()
        wait_for(lambda: _swapped_to(coord, handle_b.version), 120, "the swap to model B recorded")
        feeding.join()
        wait_for(lambda: committed_all(settings, config), 180, "all events committed")
        final = _status(coord, 30)
    finally:
        for go in released:
            go.set()
        feeding.join()
        stop_coordinator(coord)
    result = _check(settings, config, model_a, handle_a, model_b, handle_b, final, zombie_parts, recovery)
    return {**result, "swap_recorded_when_shown": swap_recorded}


def _check(settings, config, model_a, handle_a, model_b, handle_b, final, zombie_parts, recovery) -> dict:
    events = read_events(settings, config.events_topic, config.schema)
    scores = read_scores(settings, config.scores_topic)
    swap = [s for s in final["swaps"] if "error" not in s][-1]
    abandoned = [s for s in final["swaps"] if "error" in s]
    verdict_a = verify(events, scores, offline_reference(events, model_a), version_filter=handle_a.version)
    ref_b = offline_reference(
        events, model_b, start_offsets={int(p): o for p, o in swap["warm_from_offsets"].items()}
    )
    states = checkpoint_states(
        config.checkpoint_uri, config.pipeline, list(range(PARTITIONS)), model_b, handle_b.version,
        deployment=config.deployment,
    )  # fmt: skip
    verdict_b = verify(events, scores, ref_b, states, version_filter=handle_b.version)
    print(verdict_a.line)
    print(verdict_b.line)
    whole = offline_reference(events, model_b)  # the new model over the whole history
    column = whole.output_names.index("score") if "score" in whole.output_names else 0
    name = whole.output_names[column]
    diffs = [
        abs(float(scores.outputs[name][i]) - float(whole.outputs[pos][column]))
        for i, (pos, v) in enumerate(zip(scores.positions, scores.versions, strict=True))
        if v == handle_b.version
    ]
    counts: dict[tuple[int, int, int], int] = {}
    for pos in scores.positions:
        counts[pos] = counts.get(pos, 0) + 1
    zombie_twice = sum(c - 1 for pos, c in counts.items() if c > 1 and pos[0] in zombie_parts)
    twice = {pos for pos, c in counts.items() if c > 1}
    copies: dict[tuple[int, int, int], list[str]] = {}
    for pos, v in zip(scores.positions, scores.versions, strict=True):
        if pos in twice:
            copies.setdefault(pos, []).append(v[-4:])
    return {
        "events": verdict_a.expected,
        "lost": verdict_a.missing,
        "duplicates": verdict_a.duplicates,
        "unexpected": verdict_a.unexpected,
        "max_score_diff": max(verdict_a.max_score_error or 0.0, verdict_b.max_score_error or 0.0),
        "max_state_diff": verdict_b.max_state_error,
        "state_keys_checked": verdict_b.state_keys_checked,
        "coordinator_kills": 2,
        "coordinator_resumes": final["coordinator_resumes"],
        "worker_kills": 1,
        "workers_frozen": 1,
        "zombie_commits_visible": zombie_twice,
        "duplicated_at": _ranges(copies),
        "swaps_abandoned": [s["error"] for s in abandoned],
        "swap_keys_warmed": swap["keys_warmed"],
        "swap_keys_cold": swap["keys_cold"],
        "swap_score_mae": float(np.mean(diffs)) if diffs else None,
        "versions": verdict_a.versions,
        "generation": final["generation"],
        "recovery_s_max": round(max(recovery), 2),
        "recovery_s": [round(r, 2) for r in recovery],
    }


def _ranges(copies: dict[tuple[int, int, int], list[str]]) -> list[str]:
    """Duplicated positions as 'partition:first-last (versions of the copies) xN' runs, for a failure's
    message: which partition, which offsets, and whether one model or two wrote them."""
    runs: list[list] = []
    for (p, off, _), vs in sorted(copies.items()):
        if runs and runs[-1][0] == p and off - runs[-1][2] <= 1 and runs[-1][3] == vs:
            runs[-1][2] = off
            runs[-1][4] += 1
        else:
            runs.append([p, off, off, vs, 1])
    return [f"{p}:{a}-{b} ({'/'.join(vs)}) x{n}" for p, a, b, vs, n in runs]


def _swapped_to(coord: Any, version: str) -> bool:
    """The swap to ``version`` is recorded as done (the status shows the new model before its record)."""
    swaps = (_status(coord) or {}).get("swaps", [])
    return any(s.get("to") == version and "error" not in s for s in swaps)


def _scored(coord: Any) -> int:
    st = _status(coord, 30) or {"workers": []}
    return sum(int(w.get("scored", 0)) for w in st["workers"])


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone (a frozen worker killed when replaced)
        os.kill(pid, sig)
