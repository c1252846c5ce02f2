"""The control-plane chaos scenario on its own (issue 14): one stream, kill -9 of the coordinator twice, a
worker killed during a rescale 2 -> 3, a worker SIGSTOPped past its handover (3 -> 2) and woken after, a new
version promoted mid-stream with the coordinator killed during its warm-up.

Prints one object (``--json``: one JSON line): ``lost``, ``duplicates`` (read_committed), ``max_state_diff``
(final checkpointed states vs the offline run of the promoted model from its warm-up offsets),
``coordinator_kills``, ``worker_kills``, ``zombie_commits_visible``, ``swap_keys_warmed`` / ``swap_keys_cold``
(keys the challenger had / had not seen when it switched), ``swap_score_mae`` (the promoted model's live
scores vs its offline run over the whole history: what the cold keys cost), ``recovery_s_max`` (the longest
time from a fault to every partition owned and scoring again) and the rest.

The scenario itself is ``tests/workers/control_plane_chaos.py`` (the suite runs the same one at 50,000
events). ``--quick``: 20,000 events; default 50,000. Run from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the scenario lives with the tests

import e2e_fixtures as e2e  # noqa: E402  (the broker + Ray context and the printer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events instead of 50,000")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tests.workers.control_plane_chaos import run_chaos

    with e2e.broker_and_ray("rnnstream-chaos-") as (tmp, settings):
        result = run_chaos(settings, tmp, n_events=20_000 if args.quick else 50_000, seed=args.seed)
    e2e.print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
