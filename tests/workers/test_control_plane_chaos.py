"""The control plane survives (issue 14): coordinator kill -9 twice, a worker killed during a rescale
2 -> 3 -> 2, a worker frozen past its handover, a promotion mid-stream; see
:mod:`tests.workers.control_plane_chaos`."""

from __future__ import annotations

import pytest

from tests.workers.control_plane_chaos import run_chaos


@pytest.mark.timeout(900)
def test_control_plane_chaos_exactly_once(kafka_settings, ray_local, tmp_path):
    result = run_chaos(kafka_settings, tmp_path, n_events=50_000, n_keys=1000, seed=0)
    print(result)
    assert result["events"] == 50_000
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["unexpected"] == 0, result[
        "duplicated_at"
    ]
    assert result["zombie_commits_visible"] == 0
    assert result["coordinator_resumes"] == 2
    assert result["max_score_diff"] <= 1e-5
    assert result["state_keys_checked"] > 0 and result["max_state_diff"] <= 1e-5
    assert len(result["versions"]) == 2  # the old model scored the start, the promoted one the end
    assert result["swap_keys_warmed"] > 0
    assert result["swap_recorded_when_shown"]  # the status shows nothing a kill could lose
    # the swap interrupted by the coordinator's death was abandoned with a reason, then done again
    assert result["swaps_abandoned"] == ["coordinator restarted during the warm-up"]
